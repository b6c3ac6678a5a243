"""Ring-buffer record decoding: the ctypes mirror against the C header, and byte fixtures."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from detector import decode as d
from detector.events import ExecOrigin, FileOp, FsKind, Session

HEADER = Path(__file__).resolve().parents[2] / "detector" / "bpf" / "events.h"

STRUCTS: dict[str, type[ctypes.Structure]] = {
    "podlock_hdr": d.HdrC,
    "podlock_file_event": d.FileEventC,
    "podlock_exec_event": d.ExecEventC,
    "podlock_exit_event": d.ExitEventC,
    "podlock_cgroup_event": d.CgroupEventC,
    "podlock_label": d.LabelC,
    "podlock_cgroup": d.CgroupC,
}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """sizeof and offsetof of every mirrored field, as the C compiler lays out events.h."""
    cc = shutil.which("clang") or shutil.which("cc")
    assert cc, "a C compiler is needed (clang is in the Makefile's APT_PACKAGES)"
    lines = []
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in cls._fields_:
            lines.append(f'printf("{cname}.{fname} %zu\\n", offsetof(struct {cname}, {fname}));')
    src = (
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        f'#include "{HEADER}"\nint main(void) {{\n' + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "layout.c").write_text(src)
    subprocess.run([cc, "-o", str(tmp / "layout"), str(tmp / "layout.c")], check=True)
    out = subprocess.run([str(tmp / "layout")], capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in (line.split() for line in out.stdout.splitlines())}


@pytest.mark.parametrize("cname", sorted(STRUCTS))
def test_ctypes_mirror_matches_header(cname: str, c_layout: dict[str, int]) -> None:
    cls = STRUCTS[cname]
    assert ctypes.sizeof(cls) == c_layout[cname]
    for fname, *_ in cls._fields_:
        assert getattr(cls, fname).offset == c_layout[f"{cname}.{fname}"], fname


def hdr(kind: int, session: int = 2, comm: bytes = b"sh") -> bytes:
    # time_ns kind pid vpid ppid uid tty cgroup_id session_id session pad[3] comm[16]
    return struct.pack(
        "<QIIIIIIQIB3x16s", 5_000, kind, 4242, 7, 4200, 0, 0x8801, 77, 4240, session, comm
    )


# "…" (3 bytes of UTF-8) and the last names: 255 bytes, the longest a path field holds
CUT_PATH = "…" + "/d" * 125 + "/x"
assert len(CUT_PATH.encode()) == 255


def path(text: str, size: int = 256) -> bytes:
    return text.encode().ljust(size, b"\0")


def file_record(op: int, fs: int, result: int, p: str, target: str = "") -> bytes:
    return (
        hdr(d.KIND_FILE) + struct.pack("<iIBB6x", result, 0o1101, op, fs) + path(p) + path(target)
    )


def exec_record(origin: int, exepath: str, args: bytes) -> bytes:
    return (
        hdr(d.KIND_EXEC, session=1)
        + struct.pack("<B3xI", origin, len(args))
        + path(exepath)
        + args.ljust(512, b"\0")
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            file_record(1, 1, 3, "/etc/evil"),
            d.RawFile(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, Session.EXEC, 4240, "sh"),
                op=FileOp.OPEN_WRITE,
                fs=FsKind.ROOTFS,
                result=3,
                flags=0o1101,
                path="/etc/evil",
                target="",
            ),
        ),
        (
            file_record(2, 0, -30, "/etc/a", "/etc/b"),
            d.RawFile(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, Session.EXEC, 4240, "sh"),
                op=FileOp.RENAME,
                fs=FsKind.UNKNOWN,
                result=-30,
                flags=0o1101,
                path="/etc/a",
                target="/etc/b",
            ),
        ),
        (  # a cut path fills its field: the mark, then the end that names the file
            file_record(4, 2, 0, CUT_PATH),
            d.RawFile(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, Session.EXEC, 4240, "sh"),
                op=FileOp.MKDIR,
                fs=FsKind.VOLUME,
                result=0,
                flags=0o1101,
                path=CUT_PATH,
                target="",
            ),
        ),
        (
            exec_record(2, "/tmp/tool", b"/tmp/tool\0-x\0"),
            d.RawExec(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, Session.CONTAINER, 4240, "sh"),
                origin=ExecOrigin.UPPER,
                exepath="/tmp/tool",
                argv=("/tmp/tool", "-x"),
            ),
        ),
        (
            hdr(d.KIND_EXIT) + struct.pack("<iI", 256, 0),
            d.RawExit(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, Session.EXEC, 4240, "sh"),
                exit_code=256,
            ),
        ),
        (
            hdr(d.KIND_CGROUP, session=0, comm=b"runc") + path("/kubepods/x"),
            d.RawCgroup(
                hdr=d.RawHeader(5_000, 4242, 7, 4200, 0, 0x8801, 77, None, 4240, "runc"),
                path="/kubepods/x",
            ),
        ),
    ],
    ids=["open-rootfs", "rename-refused", "mkdir-cut-path", "exec-upper", "exit", "cgroup"],
)
def test_decode_records(record: bytes, expected: d.Raw) -> None:
    assert d.decode(record) == expected


@pytest.mark.parametrize(
    ("blob", "argv"),
    [
        (b"tar\0-xmf\0-\0", ("tar", "-xmf", "-")),
        (b"sh\0-c\0echo hi", ("sh", "-c", "echo hi")),  # truncated by the kernel: kept
        (b"", ()),
        (b"a\0\0b\0", ("a", "", "b")),
    ],
)
def test_split_args(blob: bytes, argv: tuple[str, ...]) -> None:
    assert d.split_args(blob) == argv


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (b"\0" * 10, "shorter than the header"),
        (hdr(9), "unknown record kind 9"),
        (hdr(d.KIND_FILE), "expected 592"),
        (file_record(99, 0, 0, "/x"), "unknown file operation 99"),
    ],
)
def test_decode_rejects_malformed_records(record: bytes, message: str) -> None:
    with pytest.raises(d.DecodeError, match=message):
        d.decode(record)
