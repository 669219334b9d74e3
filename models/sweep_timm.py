"""Architectures outside the zoo: export timm models and prune each with ``spa prune --verify``.

A sweep (not a test) of how general the analyzer is on architectures it was not
built against. For each timm model name (random weights, ``pretrained=False``:
no model hub), the ``--torch-python`` interpreter (with torch and timm, the
``models`` extra) exports it with the TorchScript exporter at opset 17 (or, with
``--dynamo``, by torch.export at its default opset, dynamic batch) and its
default input size; then this interpreter runs

    spa prune MODEL -o OUT --ratio 0.25 --verify

and records the exit code, the verdict (PASSED: mask equivalence holds), the
share of parameters and MACs removed and the pruned/total group counts.

    python models/sweep_timm.py [--torch-python /path/to/python] [--dynamo] [NAME ...]

Writes ``models/results/sweep_timm.md`` and ``.json`` (``sweep_timm_dynamo.*`` with ``--dynamo``). The default names are
two batches of families the zoo does not hold (hybrid conv/attention, MetaFormer
variants, window and halo attention, re-parameterised and NAS nets,
Inception/DPN/Res2Net/ResNeSt topologies, weight-standardised NFNet/BiT).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_common import Row, export_failed, prune_row, search_row, slice_verdict, write_results
NAMES = (
    # batch 1
    "coatnet_nano_rw_224 maxvit_nano_rw_256 cait_xxs24_224 tiny_vit_5m_224 fastvit_t8 repvit_m1 "
    "mobileone_s0 nf_regnet_b0 res2net50_14w_8s resnest14d cspresnet50 inception_v3 "
    "mobilenetv4_conv_small efficientvit_b0 efficientvit_m0 rexnet_100 hardcorenas_a fbnetc_100 "
    "sequencer2d_s resmlp_12_224 focalnet_tiny_srf davit_tiny twins_svt_small vovnet39a dpn68 "
    "hgnetv2_b0 starnet_s1 eva02_tiny_patch14_224 volo_d1_224 xception41 pit_ti_224 "
    "visformer_tiny selecsls42b gcvit_xxtiny halonet26t botnet26t_256 lambda_resnet26t "
    "crossvit_tiny_240 mixer_s16_224 convit_tiny "
    # batch 2
    "efficientformer_l1 mobilevitv2_050 levit_conv_128s regnetz_b16 gernet_s resnetv2_50x1_bit "
    "tresnet_m dla34 coat_tiny poolformerv2_s12 caformer_s18 convformer_s18 inception_next_tiny "
    "mambaout_femto fastvit_sa12 swinv2_cr_tiny_ns_224 vit_relpos_small_patch16_224 "
    "deit3_small_patch16_224 ese_vovnet19b_dw cs3darknet_s seresnext26t_32x4d ecaresnet26t "
    "resnetrs50 regnetx_002 semnasnet_075 tf_mixnet_s efficientnet_lite0 tinynet_e spnasnet_100 "
    "densenetblur121d gmixer_12_224 nest_tiny tnt_s_patch16_224 inception_v4 inception_resnet_v2 "
    "eca_nfnet_l0"
).split()

EXPORT = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch, timm
torch.set_num_threads(1)
name, out, dynamo = sys.argv[1], sys.argv[2], sys.argv[3] == "dynamo"
model = timm.create_model(name, pretrained=False).eval()
size = model.pretrained_cfg.get("input_size", (3, 224, 224))
with torch.no_grad():
    if dynamo:  # torch's default exporter at its own opset; a dynamic batch, as users export
        torch.onnx.export(model, (torch.randn(2, *size),), out, dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    else:
        torch.onnx.export(model, (torch.randn(1, *size),), out, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"])
"""


def sweep_one(name: str, torch_python: str, folder: Path, dynamo: bool = False, search: bool = False,
              sliced: bool = False) -> Row:  # fmt: skip
    model, pruned = folder / f"{name}.onnx", folder / f"{name}.pruned.onnx"
    exported = subprocess.run([torch_python, "-c", EXPORT, name, str(model), "dynamo" if dynamo else "torchscript"],
                              capture_output=True, text=True, timeout=900)  # fmt: skip
    if exported.returncode != 0:
        return export_failed(name, exported.stderr)
    row = prune_row(name, model, pruned, keep=search or sliced)
    if sliced:
        row["slice"] = slice_verdict(model, folder / f"{name}.sliced.onnx", False)
    if search:
        row["search"] = search_row(model, folder)
    for path in (model, pruned) if search or sliced else ():
        path.unlink(missing_ok=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES))
    parser.add_argument("--torch-python", default="/work/torchenv/bin/python")
    parser.add_argument("--dynamo", action="store_true",
                        help="export with torch.export (torch's default exporter); writes sweep_timm_dynamo.*")
    parser.add_argument("--search", action="store_true",
                        help="also run the search, spa optimize --calib (16 seeded samples) --max-drop 5%%")
    parser.add_argument("--slice", action="store_true", help="also run spa slice --ratio 0.25 (SliceGPT)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa-sweep-") as folder:
        for name in args.names:
            rows.append(sweep_one(name, args.torch_python, Path(folder), args.dynamo, args.search, args.slice))
            print(json.dumps(rows[-1]), flush=True)
    exporter = "torch.export at its default opset, dynamic batch" if args.dynamo else "TorchScript export at opset 17"
    flags = "".join(f" --{flag}" for flag in ("dynamo", "slice", "search") if getattr(args, flag))
    intro = (f"Written by `python models/sweep_timm.py{flags}` (random weights, {exporter}, "
             "`spa prune --ratio 0.25 --verify`, l1 criterion; mask equivalence against the input; a subset "
             "re-run keeps the other rows, so the slice column is filled where a run asked for it; --search "
             "writes its own table).")
    columns = [("model", "name"), ("result", "status"), ("params", "params"), ("MACs", "macs"),
               ("groups pruned", "groups"), ("detail", "detail"),
               ("spa slice --ratio 0.25 (--slice)", "slice"),
               ("spa optimize --max-drop 5% on 16 seeded samples (--search)", "search")]  # fmt: skip
    # a --search run writes its own table (its rows would lose their search column in the next
    # run of the prune sweep, which rewrites the whole file)
    stem = ("sweep_timm_dynamo" if args.dynamo else "sweep_timm") + ("_search" if args.search else "")
    return write_results(stem, rows, args.names != list(NAMES), "spa prune on timm architectures outside the zoo",
                         intro, columns)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
