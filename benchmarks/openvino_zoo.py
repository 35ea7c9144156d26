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
import traceback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks openvino-zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: every zoo, user-zoo and real-file model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import kiln
    from benchmarks import real_files, user_zoo, zoo
    from benchmarks.cost_model import _load
    from kiln.errors import KilnError

    names = args.models.split(",") if args.models else [*zoo.ZOO, *user_zoo.USER_ZOO, *real_files.FILES]
    raw = 0
    for name in names:
        started = time.perf_counter()
        try:
            model, inputs = _load(name)
            report = kiln.optimize(model, level=2, backend="openvino", sample_inputs=inputs).report
            result = f"ok: {report.backend_check}"
        except KilnError as exc:
            result = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        except Exception as exc:  # noqa: BLE001 - a raw exception is the finding
            raw += 1
            result = f"RAW {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        print(f"{name}: {result} ({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if raw else 0


if __name__ == "__main__":
    raise SystemExit(main())
