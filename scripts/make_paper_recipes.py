"""Write recipes/paper/{swin_b,vit_b}/<method>_<dataset>_<init>.yaml from the paper's hyperparameter table.

The table is protocol §7 (the RoLI reference configs, all ARES Swin-B, batch 64): BASE_LR / WEIGHT_DECAY as written in
the reference. roli's learning rate is the effective one, BASE_LR x 64/256 (protocol §6), written as `BASE_LR/4`.
Run once by maintainers after changing the table; tests/recipes/test_paper_recipes.py checks the files against it.
    python scripts/make_paper_recipes.py
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "recipes" / "paper"
DATASETS = ["cifar10", "cifar100", "caltech256", "cub200", "stanford_dogs"]

# (method, init) -> one (BASE_LR, WEIGHT_DECAY) per dataset, in DATASETS order.
TABLE: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("linear_probe", "ranli"): [("0.05", "0.01"), ("0.1", "0.001"), ("0.5", "0.01"), ("1.0", "0.001"), ("1.0", "0.01")],
    ("full_finetune", "ranli"): [("5e-4", "0.01"), ("5e-4", "0.001"), ("5e-4", "1e-4"), ("5e-4", "0.001"),
                                 ("5e-4", "0.01")],
    ("full_finetune", "roli"): [("1e-4", "0.01"), ("1e-4", "0.001"), ("1e-4", "1e-4"), ("1e-4", "0.01"),
                                ("5e-5", "0.001")],
    ("adapter", "ranli"): [("0.05", "0.01"), ("0.005", "1e-4"), ("0.005", "1e-4"), ("0.05", "1e-4"), ("0.005", "1e-4")],
    ("adapter", "roli"): [("0.05", "0.01"), ("0.05", "1e-4"), ("5e-4", "0"), ("0.05", "0.001"), ("1e-4", "1e-4")],
    ("lora", "ranli"): [("0.01", "1e-4"), ("0.05", "0"), ("0.001", "1e-4"), ("0.005", "1e-4"), ("0.005", "1e-4")],
    ("lora", "roli"): [("0.001", "1e-4"), ("0.001", "1e-4"), ("1e-4", "1e-4"), ("0.005", "1e-4"), ("0.001", "0.01")],
    ("bitfit", "ranli"): [("0.005", "0.001"), ("0.005", "0.001"), ("0.001", "0.01"), ("0.005", "0.001"),
                          ("0.001", "1e-4")],
    ("bitfit", "roli"): [("0.005", "0.001"), ("0.005", "0.01"), ("1e-5", "0"), ("5e-4", "1e-4"), ("5e-5", "1e-4")],
    ("vpt_deep", "ranli"): [("0.5", "0.001"), ("0.5", "0.01"), ("0.05", "0.001"), ("0.05", "0.001"), ("0.05", "1e-4")],
}
VPT_TOKENS = {"cub200": 20}  # 10 elsewhere (methods/vpt_deep.yaml)
LABEL = {"linear_probe": "Linear probing", "full_finetune": "Full finetuning", "adapter": "Adapter", "lora": "LoRA",
         "bitfit": "Bias (BitFit)", "vpt_deep": "VPT-deep"}
OPTIMIZER = {"linear_probe": "SGD"}  # AdamW elsewhere


def swin_cell(method: str, init: str, dataset: str, lr: str, wd: str) -> str:
    opt = OPTIMIZER.get(method, "AdamW")
    lines = [(f"# {LABEL[method]}, {dataset}, {'RoLI' if init == 'roli' else 'RanLI'}; ARES Swin-B. "
              f"Reference (protocol §7): BASE_LR {lr}, WEIGHT_DECAY {wd}, {opt}.")]
    if wd == "0" and opt == "AdamW":
        lines.append("# WEIGHT_DECAY 0: the reference's optimiser silently became SGD(momentum 0.9) here (B3). roli keeps "
                     "AdamW\n# without decay; --set train.optimizer=sgd reproduces the reference.")
    if method == "linear_probe":
        lines.append("# Equal to the dataset's `stage1`: the RoLI cells of this dataset reuse this run as their stage 1.")
    lines.append(f"base: [../methods/{method}.yaml, ../datasets/{dataset}.yaml]")
    transfer = f"init: {init}" + (f", num_tokens: {VPT_TOKENS[dataset]}" if method == "vpt_deep" and dataset in
                                  VPT_TOKENS else "")
    lines.append(f"transfer: {{{transfer}}}")
    lines.append(f"train: {{lr: {lr}/4, weight_decay: {wd}}}   # effective LR = BASE_LR x batch 64 / 256 (protocol §6)")
    return "\n".join(lines) + "\n"


def vit_cell(name: str) -> str:
    return (f"# ViT-B/16 variant of ../swin_b/{name}. The paper released no ViT-B hyperparameters: the Swin-B cell's\n"
            "# are reused unchanged (see ../backbone_vit_b.yaml).\n"
            f"base: [../swin_b/{name}, ../backbone_vit_b.yaml]\n")


def cells() -> list[tuple[str, str, str, str, str]]:
    return [(m, i, d, lr, wd) for (m, i), row in TABLE.items() for d, (lr, wd) in zip(DATASETS, row)]


def main() -> None:
    for method, init, dataset, lr, wd in cells():
        name = f"{method}_{dataset}_{init}.yaml"
        (OUT / "swin_b" / name).write_text(swin_cell(method, init, dataset, lr, wd))
        (OUT / "vit_b" / name).write_text(vit_cell(name))
    print(f"wrote {2 * len(cells())} recipes under {OUT}")


if __name__ == "__main__":
    main()
