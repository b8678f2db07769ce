"""Deployment: inference copies (BN folding, channels_last, bf16, compile), ONNX/TorchScript export, parity.

Public API:
    optimize_for_inference   an inference copy (folded BN, channels_last, optional bf16 autocast / compile),
                             called as the model was, run by the runtime chosen (runtime="auto": the
                             fastest measured for this machine class: an InferenceWrapper for torch, a
                             RuntimeModel for ONNX Runtime / OpenVINO, parity checked at its first call)
    InferenceWrapper         channels_last input, autocast and compile around a backbone or a detector
    fold_batchnorm           fold conv -> BN pairs in place (torch's fuse_conv_bn_weights on the fx graph)
    norms_after_convs        the norms still directly following a conv (empty after folding)
    model_device             the device of a module's first tensor
    export_model             ONNX or TorchScript file of a backbone or a whole detector (export_onnx,
                             export_torchscript), described by an ExportedModel
    check_parity             run the file and the eager model on the same inputs (parity_inputs); a ParityReport
    compare_outputs          one input's outputs of two runs compared (what check_parity and RuntimeModel use)
    choose_runtime           which runtime runs a model ("auto": FASTEST per machine class) and why
    RuntimeSession           an ONNX file in ONNX Runtime or OpenVINO (numpy in, numpy out)

Modules: ``optimize`` (inference copies), ``export`` (writing files), ``parity`` (checking them), ``runtimes``
(ONNX Runtime / OpenVINO as runtimes of the inference copy, and the "auto" choice).
"""
from .export import (
    DEFAULT_OPSET,
    FORMATS,
    INSTALL_HINT,
    MIN_OPSET,
    ExportedModel,
    check_format,
    check_size,
    export_model,
    export_onnx,
    export_torchscript,
    require_onnx,
)
from .optimize import (
    FOLDABLE_NORMS,
    LOWER_PRECISION_DTYPES,
    InferenceWrapper,
    fold_batchnorm,
    model_device,
    norms_after_convs,
    optimize_for_inference,
)
from .parity import (
    DEFAULT_TOLERANCES,
    IMAGENET_MEAN_STD,
    OutputDiff,
    ParityCase,
    ParityReport,
    check_parity,
    compare_outputs,
    input_normalization,
    parity_inputs,
)
from .runtimes import (
    EXTERNAL_RUNTIMES,
    FASTEST,
    RUNTIMES,
    RuntimeModel,
    RuntimeSession,
    available_runtimes,
    check_runtime,
    choose_runtime,
    runtime_available,
)

__all__ = [
    # optimize
    "optimize_for_inference", "InferenceWrapper", "fold_batchnorm", "norms_after_convs", "model_device",
    "FOLDABLE_NORMS", "LOWER_PRECISION_DTYPES",
    # export
    "export_model", "export_onnx", "export_torchscript", "ExportedModel", "check_format", "check_size",
    "require_onnx", "FORMATS", "INSTALL_HINT", "DEFAULT_OPSET", "MIN_OPSET",
    # parity
    "check_parity", "parity_inputs", "input_normalization", "ParityReport", "ParityCase", "OutputDiff",
    "DEFAULT_TOLERANCES", "IMAGENET_MEAN_STD", "compare_outputs",
    # runtimes
    "RUNTIMES", "EXTERNAL_RUNTIMES", "FASTEST", "RuntimeModel", "RuntimeSession", "available_runtimes",
    "check_runtime", "choose_runtime", "runtime_available",
]
