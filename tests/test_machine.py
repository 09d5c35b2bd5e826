"""The machine line that goes beside every speed figure (bench tables, `duorank bench`)."""

from __future__ import annotations

from pathlib import Path

from duorank import machine

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 fma avx f16c avx2 bmi2

processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse sse2 ssse3 fma avx f16c avx2 bmi2
"""
EPYC_VNNI = EPYC_AVX2.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512bw avx512_vnni avx512_bf16")
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\nCPU implementer\t: 0x41\n"


def _describe(tmp_path: Path, text: str) -> dict:
    f = tmp_path / "cpuinfo"
    f.write_text(text)
    return machine.describe(f)


def test_instruction_sets_from_cpuinfo(tmp_path):
    avx2 = _describe(tmp_path, EPYC_AVX2)
    assert (avx2["cpu"], avx2["isa"], avx2["vnni"]) == ("AMD EPYC 7B12", "AVX2", False)
    vnni = _describe(tmp_path, EPYC_VNNI)
    assert (vnni["isa"], vnni["vnni"]) == ("AVX-512 + VNNI + BF16", True)
    assert _describe(tmp_path, ARM)["isa"] == "NEON"
    assert machine.isa({"sse2"}) == "baseline"
    assert machine.isa({"avx2", "avx_vnni"}) == "AVX2 + VNNI"


def test_this_machine_and_its_summary(tmp_path):
    d = machine.describe()
    assert d["cores"] >= 1 and d["python"] and "numpy" in d
    line = machine.summary(d)
    assert line.startswith(f"{d['cpu']}, {d['cores']} cores, {d['isa']}; Python ")
    assert f"numpy {d['numpy']}" in line
    assert machine.versions(("numpy", "no-such-package-here")) == {
        "numpy": d["numpy"],
        "no-such-package-here": None,
    }
    # no cpuinfo (macOS, Windows): the platform module's answer
    missing = machine.describe(tmp_path / "absent")
    assert missing["cpu"] and missing["isa"] and missing["vnni"] is False
