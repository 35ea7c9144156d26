"""Every use kiln makes of onnx-ir's and onnxscript's private API, in one place, behind a version
check: the constant folder's pass class and limits, the BatchNorm fold rule classes, the
metadata key the rewriter stamps rule names with, and the Identity-elimination hook kiln guards.
A version outside the tested range fails here with a clear message instead of deep inside a pass.
So does the provenance merger kiln adds to onnxscript's rewriter."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter.rules.common import _fuse_batchnorm
from packaging.version import Version

from kiln.errors import KilnError

#: The versions these shims were written and tested against (constraints.txt pins them).
TESTED = {"onnxscript": ("0.7", Version(onnxscript.__version__)), "onnx-ir": ("1.1", Version(ir.__version__))}


def check_versions() -> None:
    """Raise when onnxscript or onnx-ir is of a minor version the shims were not tested with."""
    for package, (series, found) in TESTED.items():
        if f"{found.major}.{found.minor}" != series:
            raise KilnError(f"kiln uses private API of {package} {series}.x, but {package} {found} is installed; "
                            f"install the version in kiln's constraints.txt (pip install -c constraints.txt -e .).")


check_versions()

#: onnxscript's constant-folding pass (`onnxscript.optimizer.fold_constants` wraps it without the
#: `should_fold` hook kiln's size policy needs) and its default size limits, in elements.
FoldConstantsPass = _constant_folding.FoldConstantsPass
CONSTANT_FOLDING_LOGGER = _constant_folding.__name__
DEFAULT_FOLD_INPUT_SIZE_LIMIT: int = _constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
DEFAULT_FOLD_OUTPUT_SIZE_LIMIT: int = _constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT

#: onnxscript's BatchNorm fold rules as classes (its public rule objects cannot take one more
#: check; kiln's layer folding subclasses them to refuse BatchNorms in training mode).
BATCHNORM_FOLD_RULE_CLASSES: tuple[type, ...] = (
    _fuse_batchnorm.FuseBatchNormIntoConv,
    _fuse_batchnorm.FuseBatchNormIntoConvTranspose,
    _fuse_batchnorm.FuseBatchNormIntoGemm,
)

#: Metadata key onnxscript's rewriter puts on the nodes a rule created, holding the rule's name.
RULE_NAME_KEY = "pkg.onnxscript.rewriter.rule_name"


def add_rewriter_metadata_merger(key: str, merge: Callable[[str, str], str]) -> None:
    """Have onnxscript's rewriter merge metadata `key` with `merge` when a rule replaces nodes:
    it merges through one private module-level MetadataMerger and offers no public hook."""
    from onnxscript.rewriter import _rewrite_rule

    merger = getattr(_rewrite_rule, "_default_metadata_merger", None)
    if merger is None or not hasattr(merger, "mergers"):
        raise KilnError("onnxscript's rewriter has no metadata merger table any more; kiln's provenance would be "
                        "lost in rewrites. Install the onnxscript version in kiln's constraints.txt.")
    merger.mergers.setdefault(key, merge)


class IdentityEliminationHook(common_passes.IdentityEliminationPass):
    """onnx-ir's Identity elimination with a per-node veto (`keep`): subclasses refuse nodes the
    stock pass would remove unsafely. Overrides the private `_try_eliminate_identity_node`."""

    def keep(self, node: ir.Node) -> bool:
        """True to leave `node` in place."""
        return False

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if self.keep(node):
            return False
        return super()._try_eliminate_identity_node(node)
