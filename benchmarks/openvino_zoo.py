"""`python -m benchmarks openvino-zoo`: every benchmark-zoo, user-zoo and real-file model through
``kiln.optimize(level=2, backend="openvino")``.

Each model is optimized on its zoo inputs; kiln checks the result compiled by OpenVINO (f32)
against ONNX Runtime on the original (`report.backend_check`). A model OpenVINO cannot take ends
in the `kiln.errors` exception kiln raised; anything else is a bug and is printed with its
traceback. One line per model.
"""

from __future__ import annotations

import argparse
import logging
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks openvino-zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: every zoo, user-zoo and real-file model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import kiln
    from benchmarks import real_files, user_zoo, zoo
    from benchmarks.base import outcome
    from benchmarks.cost_model import _load

    def check(name: str) -> str:
        model, inputs = _load(name)
        return f"ok: {kiln.optimize(model, level=2, backend='openvino', sample_inputs=inputs).report.backend_check}"

    names = args.models.split(",") if args.models else [*zoo.ZOO, *user_zoo.USER_ZOO, *real_files.FILES]
    raw = 0
    for name in names:
        started = time.perf_counter()
        result, status = outcome(lambda name=name: check(name), 700)
        raw += status == "raw"
        print(f"{name}: {result} ({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if raw else 0


if __name__ == "__main__":
    raise SystemExit(main())
