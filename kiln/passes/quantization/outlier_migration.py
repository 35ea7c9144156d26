"""Activation outliers migrated into weights before quantization: SmoothQuant's per-channel scale
and Outlier Suppression+'s per-channel shift, at every activation a group of linears reads
(`migration_sites`).

A few channels of a transformer's activations are tens of times larger than the rest; one
per-tensor activation scale then spends its 255 levels on them and rounds the other channels
coarsely. Dividing channel j by ``s_j = max|x_j - z_j|^alpha / max|W_j|^(1 - alpha)`` (after a
shift ``z_j`` to the middle of its range, with shift) and multiplying the weight rows by s_j
evens the channels out, and the rewrite is exact before quantization: the weights absorb s, the
biases ``z @ W``, and the division is either absorbed too (a LayerNorm's gamma and beta take
1 / s and -z / s, and its other readers get ``Y' * s + z`` back) or computed by a Mul (+ Add) in
front of the linears.

Which form each site takes (none, or scale, or shift and scale, at alpha 0.25 / 0.5 / 0.75)
is measured on the calibration inputs: the fp32 model runs once to record each site's
per-channel range on each feed, once more to measure, per feed, the error of the site's linears
with the activation on a per-tensor uint8 grid at the form's range on the other feeds (a static
scale meets inputs it was not taken from: a form fitted too tightly to the calibration inputs
clips the rest) and the weights int8 per output channel (the static scheme's grid; the dynamic
schemes' per-call range is no wider), against their fp32 outputs. Only per-feed ranges and
running sums are kept, never the tensors. The least error
wins; the cost model prices the nodes each form adds, and the row shows both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from kiln.errors import PassError
from kiln.ir.edits import new_initializer, remove_unused_initializers, sketch_node
from kiln.ir.inputs import Feeds
from kiln.ir.provenance import merge_provenance
from kiln.passes.infra.contract import ModelRunner, Pass, PassContext, PassResult
from kiln.passes.infra.recording import node_ref
from kiln.passes.quantization.config import QuantConfig
from kiln.passes.quantization.migration_sites import MigrationSite, find_migration_sites
from kiln.passes.quantization.observers import data_mask
from kiln.passes.quantization.static_activations import ActivationRange, exposing
from kiln.passes.quantization.weights import quantize_weight
from kiln.report.model import Alternative, Decision, Rewrite

logger = logging.getLogger(__name__)

__all__ = ["ALPHAS", "Migration", "MigrateActivationOutliers", "candidate_migrations", "migrate"]

#: the migration strengths tried at each site (SmoothQuant's alpha: 0 leaves the activation's
#: peaks, 1 moves them all into the weights, which evens every channel to the same peak and
#: leaves a static scale no headroom for inputs beyond the calibration range)
ALPHAS = (0.25, 0.5, 0.75)
_QUESTION = "migrate activation outliers into the weights"
_NONE = "none"


@dataclass(frozen=True)
class Migration:
    """One form of a site: channel j of the norm's output becomes ``(y_j - shift_j) / scale_j``."""

    name: str
    scale: np.ndarray
    shift: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.shift is None and bool(np.all(self.scale == 1.0))


def _rows(array: np.ndarray, channels: int) -> np.ndarray:
    return np.asarray(array, np.float32).reshape(-1, channels)


def _weight_rows(site: MigrationSite) -> tuple[np.ndarray, np.ndarray]:
    """The site's linears side by side (K x sum N, one column block per linear) and their biases
    (zeros where a linear has none), with each linear's product scale alpha applied."""
    weights = np.concatenate([linear.weight * np.float32(linear.alpha) for linear in site.linears], axis=1)
    biases = np.concatenate([linear.bias if linear.bias is not None else np.zeros(linear.weight.shape[1], np.float32)
                             for linear in site.linears])
    return weights.astype(np.float32), biases.astype(np.float32)


def candidate_migrations(site: MigrationSite, low: np.ndarray, high: np.ndarray,
                         alphas: Sequence[float] = ALPHAS) -> list[Migration]:
    """The forms tried at `site` given its per-channel calibration range [low, high]: none, then
    SmoothQuant scales at each alpha, then (where every linear has a bias to absorb it) the same
    after OS+'s shift to each channel's midpoint."""
    weights, _ = _weight_rows(site)
    weight_peak = np.abs(weights).max(axis=1)
    forms = [Migration(_NONE, np.ones(site.channels, np.float32))]
    for shifted in (False, True) if site.shiftable else (False,):
        shift = ((high + low) / 2).astype(np.float32) if shifted else np.zeros(site.channels, np.float32)
        peak = np.maximum(np.abs(high - shift), np.abs(low - shift))
        for alpha in alphas:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                scale = peak.astype(np.float64) ** alpha / weight_peak.astype(np.float64) ** (1.0 - alpha)
            usable = np.isfinite(scale) & (scale > 0) & (peak > 0) & (weight_peak > 0)
            scale = np.where(usable, scale, 1.0).astype(np.float32)
            name = f"{'shift+scale' if shifted else 'scale'} alpha={alpha:.2f}"
            forms.append(Migration(name, scale, shift if shifted else None))
    return forms


@dataclass
class _Errors:
    """Running sums of one site's squared linear-output error per form, and of the fp32 outputs'
    squares. Feed f is scored on the activation grid the other feeds' range gives (`grids[k][f]`):
    the error of a range on inputs it was not taken from, as a static scale meets them."""

    forms: list[Migration]
    grids: list[list[ActivationRange]]  # per form, per feed
    quantized: list[np.ndarray]  # each form's weights on their int8 grid, dequantized
    weights: np.ndarray  # the fp32 weights and biases (`_weight_rows`)
    biases: np.ndarray
    error: np.ndarray
    norm: float = 0.0

    def relative(self) -> np.ndarray:
        return self.error / self.norm if self.norm > 0 else self.error


def _fake_quantize(x: np.ndarray, grid: ActivationRange) -> np.ndarray:
    scale, zero_point = float(grid.scale), float(grid.zero_point)
    return ((np.clip(np.rint(x / scale) + zero_point, 0.0, 255.0) - zero_point) * scale).astype(np.float32)


def _left_out(values: np.ndarray, reduce: np.ufunc) -> np.ndarray:
    """For each feed, `reduce` over the other feeds (over all of them when there is one)."""
    if values.size == 1:
        return values
    return np.array([reduce.reduce(np.delete(values, f)) for f in range(values.size)])


def _errors_for(site: MigrationSite, forms: list[Migration], lows: np.ndarray, highs: np.ndarray, *,
                per_channel: bool, reduce_range: bool) -> _Errors:
    """The error sums of `forms` at `site`, empty, given each feed's per-channel range (feeds x
    channels)."""
    weights, biases = _weight_rows(site)
    grids, quantized = [], []
    for form in forms:
        shift = form.shift if form.shift is not None else 0.0
        low = _left_out(((lows - shift) / form.scale).min(axis=1), np.minimum)
        high = _left_out(((highs - shift) / form.scale).max(axis=1), np.maximum)
        grids.append([ActivationRange(float(lo), float(hi)) for lo, hi in zip(low, high)])
        q = quantize_weight(form.scale[:, None] * weights, per_channel=per_channel, reduce_range=reduce_range)
        quantized.append(q.dequantized())
    return _Errors(forms, grids, quantized, weights, biases, np.zeros(len(forms)))


def _accumulate(errors: _Errors, site: MigrationSite, x: np.ndarray, feed: int) -> None:
    reference = x @ errors.weights
    errors.norm += float(np.square(reference + errors.biases, dtype=np.float64).sum())
    for k, form in enumerate(errors.forms):
        shift = form.shift if form.shift is not None else np.zeros(site.channels, np.float32)
        moved = (x - shift) / form.scale
        output = _fake_quantize(moved, errors.grids[k][feed]) @ errors.quantized[k] + shift @ errors.weights
        errors.error[k] += float(np.square(output - reference, dtype=np.float64).sum())


def feed_channel_ranges(model: ir.Model, runner: ModelRunner, feeds: Sequence[Feeds], sites: Sequence[MigrationSite],
                        *, exposed: tuple[ir.Model, dict[str, int]] | None = None
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's per-channel low and high on each of `feeds` (feeds x channels; the fp32 model
    with the sites' activations exposed, `exposed` if already built, one feed at a time; what is
    not data to the range observers, `observers.data_mask`, left out)."""
    probe, index = exposed or exposing(model, [site.value for site in sites])
    found: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for feed in feeds:
        outputs = runner(probe, feed)
        for site in sites:
            name = site.value.name
            if name not in index:
                continue
            rows = _rows(outputs[index[name]], site.channels)
            data = data_mask(rows)
            low = np.where(data, rows, np.inf).min(axis=0)
            high = np.where(data, rows, -np.inf).max(axis=0)
            lows, highs = found.setdefault(name, ([], []))
            lows.append(np.where(np.isfinite(low), low, 0.0))
            highs.append(np.where(np.isfinite(high), high, 0.0))
    return {name: (np.stack(lows).astype(np.float32), np.stack(highs).astype(np.float32))
            for name, (lows, highs) in found.items()}


def channel_ranges(model: ir.Model, runner: ModelRunner, feeds: Sequence[Feeds],
                   sites: Sequence[MigrationSite]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's per-channel [low, high] over all of `feeds`."""
    return {name: (lows.min(axis=0), highs.max(axis=0))
            for name, (lows, highs) in feed_channel_ranges(model, runner, feeds, sites).items()}


def migrate(graph: ir.Graph, site: MigrationSite, form: Migration) -> list[ir.Node]:
    """Rewrite `site` in place so its linears read ``Y' = (Y - shift) / scale`` with their weights
    and biases adjusted: a norm computes Y' itself and its other readers get ``Y' * scale (+
    shift)`` back; elsewhere a Mul (+ Add) in front of the linears computes Y'. Returns the nodes
    added."""
    scale = form.scale.astype(np.float32)
    shift = form.shift.astype(np.float32) if form.shift is not None else None
    old: list[ir.Value | None] = []
    added: list[ir.Node] = []
    if site.norm is not None:
        _migrate_norm(graph, site, scale, shift, old)
    else:
        added = _affine_nodes(graph, site.value, (1.0 / scale).astype(np.float32),
                              (-shift / scale).astype(np.float32) if shift is not None else None,
                              f"{site.name}.migrated", ("divided", "moved"))
        producer = site.value.producer()
        if producer is not None:
            graph.insert_after(producer, added)
        else:  # a graph input: before the first node that reads it
            graph.insert_before(min((use.owner for use in site.value.uses()), key=list(graph).index), added)
        for linear in site.linears:
            linear.node.replace_input_with(0, added[-1].outputs[0])
    for linear in site.linears:
        _migrate_linear(graph, linear, scale, shift, old)
    if site.norm is not None and site.others:
        added = _affine_nodes(graph, site.value, scale, shift, f"{site.name}.restore", ("rescaled", "restored"))
        graph.insert_after(site.norm, added)
        for reader, index in site.others:
            reader.replace_input_with(index, added[-1].outputs[0])
    for node in added:
        merge_provenance(node, [site.norm or site.linears[0].node])
    remove_unused_initializers(graph, old)
    for value in old:  # constants a Constant node made (not folded into initializers)
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == "Constant" and not value.uses() \
                and not value.is_graph_output():
            graph.remove(producer, safe=True)
    return added


def _migrate_norm(graph: ir.Graph, site: MigrationSite, scale: np.ndarray, shift: np.ndarray | None,
                  old: list[ir.Value | None]) -> None:
    """gamma / scale and (beta - shift) / scale into the norm (a beta input added if needed)."""
    norm, prefix = site.norm, site.name
    assert norm is not None and site.gamma is not None
    old.extend(norm.inputs[1:])
    gamma = (site.gamma / scale).astype(np.float32)
    norm.replace_input_with(1, new_initializer(graph, f"{prefix}.scale_migrated", gamma))
    if site.beta is not None or shift is not None:
        beta = site.beta if site.beta is not None else np.zeros(site.channels, np.float32)
        moved = ((beta - (shift if shift is not None else 0.0)) / scale).astype(np.float32)
        if len(norm.inputs) < 3:
            norm.resize_inputs(3)
        norm.replace_input_with(2, new_initializer(graph, f"{prefix}.bias_migrated", moved))


def _migrate_linear(graph: ir.Graph, linear: Linear, scale: np.ndarray, shift: np.ndarray | None,
                    old: list[ir.Value | None]) -> None:
    """scale * W into the linear's weight (its own layout), and with a shift, alpha * shift @ W
    into its bias (Gemm's C, divided by beta)."""
    node = linear.node
    old.extend(node.inputs[1:])
    weight = (scale[:, None] * linear.weight).astype(np.float32)
    trans_b = node.attributes.get("transB")
    stored = weight.T if trans_b is not None and trans_b.as_int() else weight
    node.replace_input_with(1, new_initializer(graph, f"{linear.name}.weight_migrated", np.ascontiguousarray(stored)))
    if shift is not None:
        assert linear.bias is not None  # the site is shiftable
        beta_attr = node.attributes.get("beta")
        beta = beta_attr.as_float() if beta_attr is not None else 1.0
        bias = linear.bias + np.float32(linear.alpha) * (shift @ linear.weight)
        node.replace_input_with(2, new_initializer(graph, f"{linear.name}.bias_migrated",
                                                   (bias / np.float32(beta)).astype(np.float32)))
    if linear.transpose is not None and not linear.transpose.outputs[0].uses() \
            and not linear.transpose.outputs[0].is_graph_output():
        old.append(linear.transpose.inputs[0])
        graph.remove(linear.transpose, safe=True)


def _affine_nodes(graph: ir.Graph | None, value: ir.Value, multiplier: np.ndarray, addend: np.ndarray | None,
                  prefix: str, suffixes: tuple[str, str]) -> list[ir.Node]:
    """``value * multiplier (+ addend)``, per channel (not yet inserted); with `graph` None,
    sketched for the cost model, outside any graph."""
    if graph is None:
        factor = ir.Value(name="factor", shape=ir.Shape([multiplier.size]), type=ir.TensorType(ir.DataType.FLOAT))
        nodes = [sketch_node("Mul", [value, factor], [(value.shape, ir.DataType.FLOAT)])]
        if addend is not None:
            nodes.append(sketch_node("Add", [nodes[0].outputs[0], factor], [(value.shape, ir.DataType.FLOAT)]))
        return nodes
    nodes = [ir.Node("", "Mul", [value, new_initializer(graph, f"{prefix}_scale", multiplier)], name=f"{prefix}_scale")]
    if addend is not None:
        nodes.append(ir.Node("", "Add", [nodes[0].outputs[0], new_initializer(graph, f"{prefix}_shift", addend)],
                             name=f"{prefix}_shift"))
    for node, suffix in zip(nodes, suffixes if len(nodes) > 1 else suffixes[1:]):
        node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, value.shape
        node.outputs[0].name = f"{prefix}.{suffix}"
    return nodes


def _added_nodes(site: MigrationSite, form: Migration) -> list[ir.Node]:
    """The nodes `form` adds at `site`, sketched to price them: none for an identity form or a
    norm without other readers."""
    if form.is_identity or (site.norm is not None and not site.others):
        return []
    return _affine_nodes(None, site.value, form.scale, form.shift, "", ("", ""))


def _outliers(low: np.ndarray, high: np.ndarray) -> tuple[str, dict[str, float]]:
    """The site's outlier statistics: the largest channel peak |y|, its channel, and the median
    channel peak."""
    peak = np.maximum(np.abs(low), np.abs(high))
    top = int(np.argmax(peak))
    median = float(np.median(peak))
    ratio = float(peak[top] / median) if median > 0 else float("inf")
    text = (f"channel peaks |y|: largest {peak[top]:.3g} (channel {top}), median {median:.3g} "
            f"({ratio:.1f}x the median)")
    return text, {"peak": float(peak[top]), "median_peak": median, "peak_over_median": ratio}


class MigrateActivationOutliers(Pass):
    """Migrates the per-channel outliers of each activation linears read into their weights, in
    the measured form with the least quantization error (see the module doc): at LayerNorm
    outputs, or at every such activation with ``QuantConfig.migration_sites="all"``. Exact before
    quantization: the PassManager checks it as any exact pass."""

    name = "migrate_activation_outliers"
    exact = True
    rule = "migrate_activation_outliers"

    def __init__(self, config: QuantConfig | None = None, *, calibration: Sequence[Feeds] | None = None,
                 runner: ModelRunner | None = None, alphas: Sequence[float] = ALPHAS) -> None:
        self.config = config or QuantConfig(migrate_outliers=True)
        self.calibration = list(calibration) if calibration is not None else None
        self.runner = runner
        self.alphas = tuple(alphas)
        if not self.alphas or any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise PassError(f"alphas={alphas!r}: give migration strengths in [0, 1].")

    def call(self, model: ir.Model, ctx: PassContext) -> PassResult:
        sites, left = find_migration_sites(model.graph, explicit=self.config.migration_sites == "all")
        leftover = "; ".join(f"{count} left: {why}" for why, count in sorted(left.items()))
        if not sites:
            return PassResult(model, False, message="no activation linears read to migrate"
                              + (f" (LayerNorms {leftover})" if leftover else ""))
        runner = self.runner or ctx.runner
        feeds = self.calibration or ctx.calibration_feeds()
        if runner is None or not feeds:
            return PassResult(model, False, message="no calibration inputs or runner to measure the activations' "
                              "channel ranges on; nothing migrated")
        exposed = exposing(model, [site.value for site in sites])  # one probe for both runs over the feeds
        per_feed = feed_channel_ranges(model, runner, feeds, sites, exposed=exposed)
        measured = [site for site in sites if site.value.name in per_feed]
        ranges = {name: (lows.min(axis=0), highs.max(axis=0)) for name, (lows, highs) in per_feed.items()}
        errors = {site.name: _errors_for(site, candidate_migrations(site, *ranges[site.value.name], self.alphas),
                                         *per_feed[site.value.name], per_channel=self.config.per_channel,
                                         reduce_range=bool(self.config.reduce_range))
                  for site in measured}
        probe, index = exposed
        for f, feed in enumerate(feeds):
            outputs = runner(probe, feed)
            for site in measured:
                _accumulate(errors[site.name], site, _rows(outputs[index[site.value.name]], site.channels), f)
        chosen: list[tuple[MigrationSite, Migration, Decision]] = []
        for site in measured:
            decision = self._decision(site, errors[site.name], ranges[site.value.name], ctx)
            ctx.record(decision)
            form = next(f for f in errors[site.name].forms if f.name == decision.chosen)
            if not form.is_identity:
                chosen.append((site, form, decision))
        rewrites = []
        for site, form, decision in chosen:
            refs = [node_ref(n) for n in (site.norm, *(linear.node for linear in site.linears)) if n is not None]
            added = migrate(model.graph, site, form)
            where = ("; " + " + ".join(n.op_type for n in added) + (
                f" restores the norm's output for {len(site.others)} other readers" if site.norm is not None
                else " in front of the linears")) if added else ""
            rewrites.append(Rewrite(rule=self.rule, nodes=refs, reason=decision.reason,
                                    result=f"{form.name} into {len(site.linears)} linears" + where))
        norms = sum(site.norm is not None for site, _, _ in chosen)
        message = (f"{norms} of {sum(site.norm is not None for site in sites)} LayerNorm outputs and "
                   f"{len(chosen) - norms} of {sum(site.norm is None for site in sites)} other activations migrated "
                   "into their linears' weights" + (f"; LayerNorms {leftover}" if leftover else ""))
        logger.info("%s: %s", self.name, message)
        return PassResult(model, bool(chosen), rewrites=rewrites, message=message)

    def _decision(self, site: MigrationSite, errors: _Errors, channel_range: tuple[np.ndarray, np.ndarray],
                  ctx: PassContext) -> Decision:
        """The site's row: each form's measured relative error of the linears' outputs and the
        predicted time of what restores the norm's output for its other readers."""
        relative = errors.relative()
        best = min(range(len(errors.forms)), key=lambda k: (relative[k], k))
        stats_text, stats = _outliers(*channel_range)
        rows = []
        for k, form in enumerate(errors.forms):
            metrics = {"relative_error": float(relative[k]), **(stats if k == 0 else {})}
            added = _added_nodes(site, form)
            predicted = (ctx.cost.price(added) if added else 0.0) if ctx.cost is not None else None
            rows.append(Alternative(form.name, predicted_ms=predicted, metrics=metrics))
        form = errors.forms[best]
        added = _added_nodes(site, form)
        cost = (f" (predicted {rows[best].predicted_ms:.4f} ms)" if rows[best].predicted_ms is not None else "")
        if not added:
            extra = ""
        elif site.norm is not None:
            extra = f"; its other {len(site.others)} readers read the output back through " + \
                " + ".join(n.op_type for n in added) + cost
        else:
            extra = "; " + " + ".join(n.op_type for n in added) + " in front of the linears" + cost
        reason = (f"{stats_text}; int8 error of its {len(site.linears)} linears' outputs on the calibration inputs: "
                  f"{relative[best]:.3g} with {form.name} against {relative[0]:.3g} without" + extra)
        return Decision(site.name, _QUESTION, rows, chosen=form.name, reason=reason, decided_by="measurement")
