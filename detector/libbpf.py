"""ctypes declarations of the part of Debian's libbpf.so.1 podlock uses.

Every function's argtypes/restype is declared once, here; the loader calls
`lib()` and never declares anything itself. bcc is not an option (it needs
kernel headers these machines lack), and libbpf's C API is stable since 1.0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_int = ctypes.c_int
c_uint32 = ctypes.c_uint32
c_size_t = ctypes.c_size_t

# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *fmt, va_list ap)
# Python cannot format a va_list: loader._print hands it to libc's vsnprintf (below).
PrintCallback = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class BpfProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (uapi), up to the run-time statistics."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
    ]


class LibbpfUnavailable(Exception):
    """libbpf.so.1 could not be loaded."""


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [PrintCallback]),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint32)]),
}


@functools.cache
def lib() -> ctypes.CDLL:
    """The loaded library with every signature declared; raises LibbpfUnavailable."""
    try:
        handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        try:  # find_library runs ldconfig: only when the usual name is not there
            handle = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so", use_errno=True)
        except OSError as exc:
            raise LibbpfUnavailable(f"cannot load libbpf ({exc})") from None
    for func_name, (restype, argtypes) in _SIGNATURES.items():
        func = getattr(handle, func_name)
        func.restype = restype
        func.argtypes = argtypes
    return handle


@functools.cache
def vsnprintf() -> Any:
    """libc's vsnprintf, to format libbpf's log lines (fmt + va_list)."""
    func = ctypes.CDLL(None).vsnprintf
    func.restype = c_int
    func.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
    return func
