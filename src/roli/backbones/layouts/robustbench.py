"""RobustBench-style files: `normalize_model(net, mean, std)` saves `normalize.mean` / `normalize.std` and
`model.*` (optionally under `state_dict` and with DataParallel's `module.`). The inner state dict can be any
layout roli reads (ARES's old-layout Swin inside, for example): it is detected and converted in turn.
"""

from __future__ import annotations

from torch import nn

from roli.backbones.convert import CONVERTERS, Conversion, State, _strip_prefix, convert_state_dict, detects


@detects("robustbench", any_inner=True)
def is_robustbench(keys: State) -> bool:
    """Every key under `model.` or `normalize.` (a plain timm model has no top-level `model` module)."""
    return any(k.startswith("model.") for k in keys) and all(k.startswith(("model.", "normalize.")) for k in keys)


@CONVERTERS.register("robustbench")
def robustbench(state: State, net: nn.Module) -> Conversion:
    """Unwrap `model.*`, read `normalize.mean/std` as the file's normalisation, convert the rest by its layout
    (a plain timm state dict, as RobustBench's Singh/ARES downloads are, passes through)."""
    state = _strip_prefix(state)
    if not is_robustbench(state):
        conv = convert_state_dict(state, net, "auto")
        conv.format = f"robustbench ({conv.format.removeprefix('auto -> ')})"
        return conv
    inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    conv = convert_state_dict(inner, net, "auto")
    conv.format = f"robustbench ({conv.format.removeprefix('auto -> ')})"
    conv.renamed = {f"model.{k}": conv.renamed.get(k, k) for k in inner}
    conv.dropped.update({k: "normaliser (applied by roli's PixelNormalize instead)" for k in state
                         if k.startswith("normalize.")})
    if "normalize.mean" in state and "normalize.std" in state:
        conv.mean = tuple(float(x) for x in state["normalize.mean"].flatten())
        conv.std = tuple(float(x) for x in state["normalize.std"].flatten())
    return conv
