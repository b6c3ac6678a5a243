/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one header shared by the BPF programs and (through its ctypes mirror in
 * detector/decode.py) the Python side. Every record starts with struct
 * podlock_hdr; `kind` says which record follows. Sizes are pinned below and by
 * tests/detector/test_decode.py, which compiles this header and compares offsets.
 *
 * Only fixed-width types: this file is included by BPF C (with vmlinux.h) and by
 * a host C program in the layout test (with <stdint.h>).
 *
 * Paths: absolute inside the container's root, so they start with '/'. One too
 * long for its field (PODLOCK_PATH_LEN - 1 bytes) is cut at the front: it starts
 * with "…" (U+2026, 3 bytes of UTF-8) and keeps its end, from a '/' when there
 * is one within reach, so the file's own name is always there.
 */
#ifndef PODLOCK_EVENTS_H
#define PODLOCK_EVENTS_H

#define PODLOCK_COMM_LEN 16
#define PODLOCK_PATH_LEN 256
#define PODLOCK_ARGS_LEN 512

enum podlock_kind {
	PODLOCK_EV_FILE = 1,
	PODLOCK_EV_EXEC = 2,
	PODLOCK_EV_EXIT = 3,
	PODLOCK_EV_CGROUP = 4, /* a cgroup that looks like a container's was created */
};

enum podlock_session {
	PODLOCK_SESSION_NONE = 0,
	PODLOCK_SESSION_CONTAINER = 1,
	PODLOCK_SESSION_EXEC = 2,
};

enum podlock_fs {
	PODLOCK_FS_UNKNOWN = 0, /* the directory fd was gone: user space decides from the mount table */
	PODLOCK_FS_ROOTFS = 1,
	PODLOCK_FS_VOLUME = 2,
};

enum podlock_op {
	PODLOCK_OP_OPEN = 1,
	PODLOCK_OP_RENAME = 2,
	PODLOCK_OP_UNLINK = 3,
	PODLOCK_OP_MKDIR = 4,
	PODLOCK_OP_LINK = 5,
	PODLOCK_OP_SYMLINK = 6,
	PODLOCK_OP_CHMOD = 7,
};

enum podlock_origin {
	PODLOCK_ORIGIN_UNKNOWN = 0,
	PODLOCK_ORIGIN_IMAGE = 1,
	PODLOCK_ORIGIN_UPPER = 2,
	PODLOCK_ORIGIN_VOLUME = 3,
	PODLOCK_ORIGIN_MEMFD = 4,
};

/* Per-process label, value of the `procs` map (key: host tgid). */
struct podlock_label {
	__u64 cgroup_id;
	__u32 session_id; /* host tgid of the exec session's entry process, 0 for container */
	__u8 session;	  /* enum podlock_session */
	__u8 _pad[3];
};

/* Value of the `containers` map (key: cgroup v2 id). */
struct podlock_cgroup {
	__u64 init_claimed; /* 1 once the container's own first process has exec'd */
};

struct podlock_hdr {
	__u64 time_ns; /* CLOCK_BOOTTIME; user space converts to wall-clock time */
	__u32 kind;    /* enum podlock_kind */
	__u32 pid;     /* host tgid */
	__u32 vpid;    /* tgid in the task's own PID namespace */
	__u32 ppid;    /* host tgid of the real parent */
	__u32 uid;
	__u32 tty; /* controlling tty as in /proc/PID/stat tty_nr, 0 = none */
	__u64 cgroup_id;
	__u32 session_id;
	__u8 session;
	__u8 _pad[3];
	char comm[PODLOCK_COMM_LEN];
};

struct podlock_file_event {
	struct podlock_hdr hdr;
	__s32 result; /* 0 / fd on success, -errno on refusal */
	__u32 flags;  /* open flags, or the new mode for mkdir/chmod */
	__u8 op;      /* enum podlock_op */
	__u8 fs;      /* enum podlock_fs */
	__u8 _pad[6];
	char path[PODLOCK_PATH_LEN];   /* absolute, inside the container's root (or cut) */
	char target[PODLOCK_PATH_LEN]; /* rename/link destination (absolute); symlink target (raw) */
};

struct podlock_exec_event {
	struct podlock_hdr hdr;
	__u8 origin; /* enum podlock_origin */
	__u8 _pad[3];
	__u32 args_len; /* bytes of args used: NUL-separated argv */
	char exepath[PODLOCK_PATH_LEN];
	char args[PODLOCK_ARGS_LEN];
};

struct podlock_exit_event {
	struct podlock_hdr hdr;
	__s32 exit_code;
	__u32 _pad;
};

struct podlock_cgroup_event {
	struct podlock_hdr hdr;
	char path[PODLOCK_PATH_LEN]; /* cgroup v2 path, e.g. /kubepods/besteffort/pod<uid>/<id> */
};

_Static_assert(sizeof(struct podlock_label) == 16, "podlock_label layout");
_Static_assert(sizeof(struct podlock_cgroup) == 8, "podlock_cgroup layout");
_Static_assert(sizeof(struct podlock_hdr) == 64, "podlock_hdr layout");
_Static_assert(sizeof(struct podlock_file_event) == 64 + 16 + 2 * 256, "file event layout");
_Static_assert(sizeof(struct podlock_exec_event) == 64 + 8 + 256 + 512, "exec event layout");
_Static_assert(sizeof(struct podlock_exit_event) == 64 + 8, "exit event layout");
_Static_assert(sizeof(struct podlock_cgroup_event) == 64 + 256, "cgroup event layout");

#endif /* PODLOCK_EVENTS_H */
