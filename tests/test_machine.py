"""The machine classes and the "auto" speed defaults decided from them."""
import pytest

from resnet_fpn.machine import Machine, auto_channels_last, auto_precision, cpu_flags, machine_class, this_machine

CLASSES = [
    ({"avx2", "fma"}, "AVX2"),
    ({"avx2", "avx512f"}, "AVX-512"),
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX-512 + bf16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "AMX"),
]


@pytest.mark.parametrize("flags, expected", CLASSES)
def test_machine_class_from_flags(flags, expected):
    assert machine_class(frozenset(flags)) == expected


@pytest.mark.parametrize(
    "machine, precision, channels_last",
    [
        # Measured (docs/benchmarks.md): channels_last training 0.78x on AVX2, 1.07x on AVX-512; bf16 fast only natively.
        (Machine("cpu", "x", "AVX2", False), "32-true", False),
        (Machine("cpu", "x", "AVX-512", False), "32-true", True),
        (Machine("cpu", "x", "AVX-512 + bf16", True), "bf16-mixed", True),
        (Machine("cpu", "x", "AMX", True), "bf16-mixed", True),
        (Machine("cuda", "NVIDIA H200", "GPU", True), "bf16-mixed", True),
        (Machine("cpu", "x", "aarch64 CPU", False), "32-true", False),
    ],
)
def test_auto_defaults_follow_the_machine(machine, precision, channels_last):
    assert auto_precision(machine) == precision
    assert auto_channels_last(machine) is channels_last


def test_this_cpu_is_described_and_bad_devices_are_named():
    machine = this_machine("cpu")
    assert machine.device == "cpu" and machine.machine_class == machine_class(cpu_flags())
    assert machine.machine_class in machine.describe()
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda' \(or 'gpu'\), got 'tpu'"):
        this_machine("tpu")
