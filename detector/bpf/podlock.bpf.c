// SPDX-License-Identifier: Apache-2.0
/*
 * podlock's kernel side: session tracking and file/exec events for container
 * processes. Tracepoints only (tp_btf/), because fentry, LSM and kprobes do not
 * load on the machines podlock runs on.
 *
 * Host filtering: every handler first looks the current tgid up in `procs`,
 * which holds only container processes; a miss ends the handler. A process
 * gets into `procs` once: at fork (inheriting its parent's label) or at its
 * first exec inside a container cgroup (a cgroup in `containers`).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The hot paths read kernel structures with direct loads through BTF-typed
 * pointers (the verifier turns them into fault-safe loads), not with
 * bpf_probe_read_kernel(): a helper call per field was most of the cost of an
 * event. A pointer that comes from elsewhere (an array slot, container_of) is
 * typed again with this kfunc first.
 */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym;
#define kernel_ptr(ptr, type) ((type *)bpf_rdonly_cast((ptr), bpf_core_type_id_kernel(type)))
/* Kernel memory as untyped bytes (type id 0): loads of any size at any offset, fault-safe.
 * Names and pointer slots are read this way rather than with bpf_probe_read_kernel(): in
 * an event, every helper called is cold code, and a call costs about 100 ns. The cast to
 * type id 0 came with Linux 6.17: older kernels take the helper branch, chosen by libbpf
 * when it loads the object (the verifier never walks the other one). */
#ifdef PODLOCK_FORCE_PROBE_READ /* tests: the older kernels' branch, on this kernel */
#define HAVE_BYTES_CAST 0
#else
#define HAVE_BYTES_CAST bpf_core_enum_value_exists(enum bpf_features, BPF_FEAT_RDONLY_CAST_TO_VOID)
#endif
#define kernel_bytes(ptr) ((const char *)bpf_rdonly_cast((ptr), 0))
#define word_at(bytes, off) (*(const __u64 *)((bytes) + (off)))

/* Set by user space before load: the host's mount namespace inode. A process
 * still in it is runc's own machinery (runc init before it joins the container)
 * and is never labelled. */
const volatile __u32 host_mnt_ns = 0;

#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define EACCES 13
#define EROFS 30
#define S_IFMT 00170000
#define S_IFREG 0100000
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000
#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#define SB_RDONLY 1
#define MNT_RDONLY 0x40

/* Paths are built backwards in scratch.buf, ending here. They take at most 255 bytes below
 * it, so the 8-byte words a name is written in never reach below the buffer's start. */
#define HALF 512
#define MAX_WALK 128 /* names walked up from a dentry: more than PODLOCK_PATH_LEN can hold */
#define UPATH_LEN 4096 /* PATH_MAX: the longest path argument the kernel takes */
#define MAX_COMPS 64 /* components of a path argument kept for the mount descent */
#define MAX_MP_DEPTH 16 /* how deep below a directory a mount point is looked for */
#define MAX_CHILDREN 256 /* mounts directly on one mount that are looked at */
#define MAX_CROSSINGS 8 /* mounts crossed on the way down one path */
/* Prefix of a path that was cut to fit: its tail is kept (the end names the file),
 * from a '/' when there is one. "…" (U+2026): a whole path always starts with '/'. */
#define CUT_MARK_LEN 3

/* x86_64 syscall numbers of the file operations we report. */
#define NR_open 2
#define NR_rename 82
#define NR_mkdir 83
#define NR_creat 85
#define NR_link 86
#define NR_unlink 87
#define NR_symlink 88
#define NR_chmod 90
#define NR_fchmod 91
#define NR_openat 257
#define NR_mkdirat 258
#define NR_unlinkat 263
#define NR_renameat 264
#define NR_linkat 265
#define NR_symlinkat 266
#define NR_fchmodat 268
#define NR_renameat2 316
#define NR_openat2 437
#define NR_fchmodat2 452

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
} events SEC(".maps");

/* Container processes only: host tgid -> label. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct podlock_label);
} procs SEC(".maps");

/* Container cgroups (v2 ids): filled here at cgroup creation, seeded and
 * corrected by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct podlock_cgroup);
} containers SEC(".maps");

/* Records the ring buffer could not take (index 0); processes and container cgroups
 * left unlabelled because `procs` or `containers` was full (index UNLABELLED). */
#define UNLABELLED 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* The state of the mount descent (see path_fs), kept in the per-CPU scratch
 * map rather than on the stack: the verifier then does not follow every value
 * of its counters through the loops. */
struct parse_ctx {
	int len;   /* of s->upath */
	int start; /* of the name being read */
	int depth; /* names kept after folding */
	int up;	   /* `..` above the start directory */
};

struct descend_ctx {
	struct dentry *dentry; /* where the walk is */
	struct mount *mnt;     /* and on which mount */
	struct dentry *root_dentry;
	struct mount *root_mnt;
	int up;	      /* `..` still to take */
	int i;	      /* names taken */
	int n;	      /* names in the path */
	int crossed;  /* a mount was crossed (a mount on top of its root is crossed too) */
	struct list_head *head, *pos; /* the children of mnt being looked at */
	struct mount *best;	      /* the child whose mount point the path reaches first */
	int best_d;		      /* after this many names */
};

struct match_ctx {
	int i, d;   /* the path's names i .. i+d-1 against s->chain[0, d), bottom up */
	int at, len; /* the name being compared: where in s->upath, how long */
	int ok;
};

struct scratch {
	char buf[2 * HALF + 8];	       /* a path being built: backwards up to HALF, then on;
					* + 8: a word at the last masked offset stays inside */
	char upath[UPATH_LEN + 256];   /* a path argument; the slack keeps masked reads inside */
	char name[256 + 8];	       /* a dentry's or a cgroup's name */
	__u16 comp[MAX_COMPS];	       /* the components of upath, `.` and `..` folded: offsets */
	__u8 comp_len[MAX_COMPS];      /* and lengths */
	struct dentry *chain[MAX_MP_DEPTH]; /* a mount point's dentries, bottom up */
	char out[PODLOCK_PATH_LEN];	    /* user_path()'s answer */
	struct parse_ctx parse;
	struct descend_ctx descend;
	struct match_ctx match;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1;
}

/*
 * Waking the agent costs the task that writes an event an interrupt and a scheduler
 * wake-up, which in a storm of file events is more than the event itself. So a file
 * event wakes the agent only when the unread data crosses a multiple of WAKEUP_BYTES;
 * the agent's poll timeout (20 ms) bounds the delay of the events in between. Not even
 * the first event of an empty ring wakes it: an agent that keeps up finds the ring
 * empty every time, and would be woken for every event.
 */
#define WAKEUP_BYTES (32 * 1024)

static __always_inline __u64 file_wakeup(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 before = avail - sizeof(struct podlock_file_event) - 8; /* 8: record header */

	if (avail >= sizeof(struct podlock_file_event) + 8 && avail / WAKEUP_BYTES != before / WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* A full `procs` or `containers` map refuses new entries: counted, never silent. */
static __always_inline void count_unlabelled(long err)
{
	__u32 key = UNLABELLED;
	__u64 *n;

	if (!err)
		return;
	n = bpf_map_lookup_elem(&drops, &key);
	if (n)
		*n += 1;
}

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch_map, &zero);
}

static __always_inline __u32 task_vpid(struct task_struct *task)
{
	struct pid *pid = task->group_leader->thread_pid;
	unsigned int level = pid->level;

	return kernel_ptr((void *)pid + bpf_core_field_offset(struct pid, numbers) +
				  (level & 31) * sizeof(struct upid),
			  struct upid)
		->nr;
}

static __always_inline __u32 task_tty(struct task_struct *task)
{
	struct tty_struct *tty = task->signal->tty;
	__u32 major, minor;

	if (!tty)
		return 0;
	major = tty->driver->major;
	minor = tty->driver->minor_start + tty->index;
	/* the encoding of /proc/PID/stat's tty_nr */
	return (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
}

static __always_inline void fill_hdr(struct podlock_hdr *h, struct task_struct *task, __u32 kind,
				     const struct podlock_label *lbl)
{
	h->time_ns = bpf_ktime_get_boot_ns();
	h->kind = kind;
	h->pid = task->tgid;
	h->vpid = task_vpid(task);
	h->ppid = task->real_parent->tgid;
	h->uid = task->cred->uid.val;
	h->tty = task_tty(task);
	h->cgroup_id = lbl->cgroup_id;
	h->session_id = lbl->session_id;
	h->session = lbl->session;
	h->_pad[0] = h->_pad[1] = h->_pad[2] = 0;
	if (HAVE_BYTES_CAST) { /* what bpf_get_current_comm() copies (task is current) */
		*(__u64 *)&h->comm[0] = word_at(kernel_bytes(task->comm), 0);
		*(__u64 *)&h->comm[8] = word_at(kernel_bytes(task->comm), 8);
	} else {
		bpf_get_current_comm(h->comm, sizeof(h->comm));
	}
}

/* The struct mount around a vfsmount (container_of). */
static __always_inline struct mount *real_mount(struct vfsmount *vfsmnt)
{
	return kernel_ptr((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt), struct mount);
}

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	int off;     /* where what is written so far starts */
	int lo;	     /* nothing is written below this */
	int prev[2]; /* where the two names written before the current first one start */
	int done;    /* reached the root */
};

/* The last n bytes of name[0, len) into s->buf, ending at `end`. In words: the first word
 * may begin before them, and what it puts below is overwritten by what is written next. */
static __always_inline void put_name_end(struct scratch *s, int end, const unsigned char *name,
					 int len, int n)
{
	const char *bytes;

	if (!HAVE_BYTES_CAST) {
		bpf_probe_read_kernel(&s->buf[(end - n) & (HALF - 1)], n & 255, name + len - n);
		return;
	}
	bytes = kernel_bytes(name);
	for (int k = 0; k < 32 && 8 * k < n; k++)
		*(__u64 *)&s->buf[(end - 8 - 8 * k) & (2 * HALF - 1)] = word_at(bytes, len - 8 - 8 * k);
}

/* One step of the walk up to the task's root: a mount crossing or one name.
 * A bpf_loop() callback, so the verifier checks it once, not per iteration. */
static long walk_step(__u32 i, void *data)
{
	struct walk_ctx *c = data;
	struct scratch *s = get_scratch();
	struct dentry *dentry = c->dentry, *parent;
	struct vfsmount *vfsmnt = c->vfsmnt;
	const unsigned char *name;
	int off = c->off;
	__u32 len;

	if (!s || off < 0 || off > HALF)
		return 1;
	if (dentry == c->root_dentry && vfsmnt == c->root_mnt) {
		c->done = 1;
		return 1;
	}
	if (dentry == vfsmnt->mnt_root) {
		struct mount *mnt = real_mount(vfsmnt), *up = mnt->mnt_parent;

		if (up == mnt) {
			c->done = 1; /* the global root: the task's root is not above us */
			return 1;
		}
		c->dentry = mnt->mnt_mountpoint;
		c->vfsmnt = kernel_ptr(&up->mnt, struct vfsmount);
		return 0;
	}
	parent = dentry->d_parent;
	if (parent == dentry) {
		c->done = 1;
		return 1;
	}
	len = dentry->d_name.len;
	name = dentry->d_name.name;
	if (len > 255)
		len = 255;
	if (off - c->lo < (int)len + 1) {
		/* no room left: the path is cut here. A first name longer than all the room
		 * (a file's own NAME_MAX name) keeps its end behind the cut mark. */
		if (off == HALF && off - c->lo > CUT_MARK_LEN) {
			put_name_end(s, off, name, len, off - c->lo - CUT_MARK_LEN);
			c->off = c->prev[0] = c->prev[1] = c->lo + CUT_MARK_LEN;
		}
		return 1;
	}
	c->prev[1] = c->prev[0];
	c->prev[0] = off;
	put_name_end(s, off, name, len, len);
	off -= len;
	off -= 1;
	s->buf[off & (HALF - 1)] = '/';
	c->off = off;
	c->dentry = parent;
	return 0;
}

static __always_inline void put_cut_mark(char *at)
{
	at[0] = 0xe2; /* U+2026 in UTF-8 */
	at[1] = 0x80;
	at[2] = 0xa6;
}

/*
 * Writes the path of (dentry, vfsmnt) as seen from the task's root backwards
 * into scratch.buf, ending at HALF, in at most `room` (>= CUT_MARK_LEN) bytes.
 * Returns where it starts; HALF means the root. Crosses mount points like
 * d_path() does. A path that does not fit keeps its last names behind the cut
 * mark.
 */
static __noinline int dir_path(struct scratch *s, struct task_struct *task, struct dentry *dentry,
			       struct vfsmount *vfsmnt, int room)
{
	struct walk_ctx c = {
		.dentry = dentry,
		.vfsmnt = vfsmnt,
		.root_dentry = task->fs->root.dentry,
		.root_mnt = task->fs->root.mnt,
		.off = HALF,
		.lo = HALF - room,
		.prev = {HALF, HALF},
	};
	int start;

	bpf_loop(MAX_WALK, walk_step, &c, 0);
	if (c.done)
		return c.off;
	/* cut: drop whole names from the front until the mark fits */
	start = c.off;
	if (start - c.lo < CUT_MARK_LEN)
		start = c.prev[0];
	if (start - c.lo < CUT_MARK_LEN)
		start = c.prev[1];
	if (start - c.lo < CUT_MARK_LEN)
		start = HALF;
	/* no whole name is left behind the mark (the file's own name fills the room):
	 * keep the end of what was written instead */
	if (start == HALF && c.off < HALF)
		start = c.lo + CUT_MARK_LEN;
	start -= CUT_MARK_LEN;
	put_cut_mark(&s->buf[start & (HALF - 1)]);
	return start;
}

static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file **arr;
	struct file *f = NULL;

	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	arr = fdt->fd;
	if (HAVE_BYTES_CAST)
		f = (struct file *)word_at(kernel_bytes(arr), fd * sizeof(*arr));
	else
		bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]);
	return f ? kernel_ptr(f, struct file) : NULL;
}

/* The absolute path of an open file into out[PODLOCK_PATH_LEN]. */
static __noinline void file_path(struct scratch *s, struct task_struct *task, struct file *f,
				 char *out)
{
	int off = dir_path(s, task, f->f_path.dentry, f->f_path.mnt, PODLOCK_PATH_LEN - 1);

	s->buf[HALF] = 0;
	if (off == HALF) {
		off = HALF - 1;
		s->buf[HALF - 1] = '/';
	}
	if (!HAVE_BYTES_CAST) {
		bpf_probe_read_kernel_str(out, PODLOCK_PATH_LEN, &s->buf[off & (2 * HALF - 1)]);
		return;
	}
	/* buf[off, HALF] and its NUL, in words (the bytes after the NUL are never read) */
	for (int k = 0; k < PODLOCK_PATH_LEN / 8 && off + 8 * k <= HALF; k++)
		*(__u64 *)&out[8 * k] = *(__u64 *)&s->buf[(off + 8 * k) & (2 * HALF - 1)];
}

struct slash_ctx {
	int at;
};

static long slash_step(__u32 i, void *data)
{
	struct slash_ctx *c = data;
	struct scratch *s = get_scratch();

	if (!s)
		return 1;
	if (s->upath[(c->at + i) & (UPATH_LEN - 1)] != '/')
		return 0;
	c->at += i;
	return 1;
}

/* The end of the path argument s->upath[0, len) into out, behind the cut mark:
 * from its first '/' within the room, so that it starts with a whole name. */
static __noinline void tail_path(struct scratch *s, int len, char *out)
{
	struct slash_ctx c = {.at = len - (PODLOCK_PATH_LEN - 1 - CUT_MARK_LEN)};

	if (c.at < 0)
		c.at = 0;
	bpf_loop(len - 1 - c.at, slash_step, &c, 0);
	put_cut_mark(out);
	bpf_probe_read_kernel_str(out + CUT_MARK_LEN, PODLOCK_PATH_LEN - CUT_MARK_LEN,
				  &s->upath[c.at & (UPATH_LEN - 1)]);
}

/* A path argument copied as it is (a symlink's target) into out, cut like a path. */
static __noinline void raw_text(struct scratch *s, const char *upath, char *out)
{
	long n = bpf_probe_read_user_str(s->upath, UPATH_LEN, upath);

	if (n <= 0)
		out[0] = 0;
	else if (n <= PODLOCK_PATH_LEN)
		bpf_probe_read_kernel_str(out, PODLOCK_PATH_LEN, s->upath);
	else
		tail_path(s, n - 1, out);
}

/* ---- which mount a path argument lands on --------------------------------
 *
 * The kernel walks a path argument from the root, the cwd or a directory fd,
 * crossing into a mount wherever a name it reaches is a mount point. Done
 * again here without the dcache (BPF cannot look names up): the names of the
 * argument, `.` and `..` folded, are matched against the mount points below
 * the start directory, found from the mount side (each mount's children and
 * the dentries above their mount points). Only the mount is needed, so the
 * depth of the path does not matter; the mount points must lie within
 * MAX_MP_DEPTH names of where the walk is.
 */


static long parse_step(__u32 i, void *data)
{
	struct scratch *s = get_scratch();
	struct parse_ctx *c;
	int start, n;

	if (!s)
		return 1;
	c = &s->parse;
	start = c->start;
	n = i - start;
	if ((int)i < c->len && s->upath[i & (UPATH_LEN - 1)] != '/')
		return 0;
	c->start = i + 1;
	if (n == 0 || (n == 1 && s->upath[start & (UPATH_LEN - 1)] == '.'))
		return 0;
	if (n == 2 && s->upath[start & (UPATH_LEN - 1)] == '.' &&
	    s->upath[(start + 1) & (UPATH_LEN - 1)] == '.') {
		if (c->depth > 0)
			c->depth--;
		else
			c->up++;
		return 0;
	}
	if (c->depth < MAX_COMPS) {
		s->comp[c->depth & (MAX_COMPS - 1)] = start;
		s->comp_len[c->depth & (MAX_COMPS - 1)] = n > 255 ? 255 : n;
	}
	c->depth++;
	return 0;
}



/* One `..` at the start: to the parent, or out of a mount root (follow_dotdot). */
static long up_step(__u32 i, void *data)
{
	struct scratch *s = get_scratch();
	struct descend_ctx *c;
	struct dentry *dentry;
	struct mount *mnt, *parent;

	if (!s)
		return 1;
	c = &s->descend;
	dentry = c->dentry;
	mnt = c->mnt;
	if (c->up <= 0 || (dentry == c->root_dentry && mnt == c->root_mnt))
		return 1;
	if (dentry == BPF_CORE_READ(mnt, mnt.mnt_root)) {
		parent = BPF_CORE_READ(mnt, mnt_parent);
		if (parent == mnt)
			return 1;
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = parent;
		return 0;
	}
	c->dentry = BPF_CORE_READ(dentry, d_parent);
	c->up--;
	return 0;
}


/* Eight bytes of a name of the path against the same of s->name. */
static long word_step(__u32 w, void *data)
{
	struct scratch *s = get_scratch();
	struct match_ctx *c;
	__u64 a, b, mask = ~0ULL;
	int left;

	if (!s)
		return 1;
	c = &s->match;
	left = c->len - (int)w * 8;
	if (left < 8)
		mask = (1ULL << ((left & 7) * 8)) - 1;
	a = *(__u64 *)&s->name[(w * 8) & 255];
	b = *(__u64 *)&s->upath[(c->at + w * 8) & (UPATH_LEN - 1)];
	if ((a ^ b) & mask) {
		c->ok = 0;
		return 1;
	}
	return 0;
}

/* One name of a mount point's chain against one name of the path. */
static long match_step(__u32 k, void *data)
{
	struct scratch *s = get_scratch();
	struct match_ctx *c;
	struct dentry *x;

	if (!s)
		return 1;
	c = &s->match;
	x = s->chain[(c->d - 1 - k) & (MAX_MP_DEPTH - 1)];
	c->at = s->comp[(c->i + k) & (MAX_COMPS - 1)];
	c->len = s->comp_len[(c->i + k) & (MAX_COMPS - 1)];
	if (BPF_CORE_READ(x, d_name.len) != c->len) {
		c->ok = 0;
		return 1;
	}
	bpf_probe_read_kernel(s->name, c->len & 255, BPF_CORE_READ(x, d_name.name));
	bpf_loop(((__u32)c->len + 7) / 8, word_step, NULL, 0);
	return !c->ok;
}

/* One child mount of c->mnt, or (at the end of the list) one crossing. */
static long child_step(__u32 i, void *data)
{
	struct scratch *s = get_scratch();
	struct descend_ctx *c;
	struct mount *mnt, *best, *child;
	struct list_head *pos;
	struct dentry *x, *mnt_root;
	int d = 0;

	if (!s)
		return 1;
	c = &s->descend;
	mnt = c->mnt;
	best = c->best;
	pos = c->pos;
	if (pos == c->head) {
		if (!best)
			return 1; /* no mount point on the rest of the path */
		c->mnt = best;
		c->dentry = BPF_CORE_READ(best, mnt.mnt_root);
		c->i += c->best_d;
		c->crossed = 1;
		c->best = NULL;
		c->best_d = MAX_MP_DEPTH + 1;
		c->head = (void *)best + bpf_core_field_offset(struct mount, mnt_mounts);
		c->pos = BPF_CORE_READ(best, mnt_mounts.next);
		return 0;
	}
	child = (void *)pos - bpf_core_field_offset(struct mount, mnt_child);
	c->pos = BPF_CORE_READ(pos, next);
	/* the dentries from its mount point up to where the walk is */
	x = BPF_CORE_READ(child, mnt_mountpoint);
	mnt_root = BPF_CORE_READ(mnt, mnt.mnt_root);
	for (int k = 0; k < MAX_MP_DEPTH; k++) {
		if (x == c->dentry || x == mnt_root)
			break;
		s->chain[k & (MAX_MP_DEPTH - 1)] = x;
		x = BPF_CORE_READ(x, d_parent);
		d++;
	}
	if (x != c->dentry || (d == 0 && !c->crossed))
		return 0; /* not below it (the start directory itself is never crossed) */
	if (d >= c->best_d || c->i + d > c->n || c->i + d > MAX_COMPS)
		return 0;
	s->match.i = c->i;
	s->match.d = d;
	s->match.ok = 1;
	bpf_loop(d, match_step, NULL, 0);
	if (s->match.ok) {
		c->best = child;
		c->best_d = d;
	}
	return 0;
}

/*
 * The mount the path argument in s->upath[0, len) lands on, walked from
 * (dentry, vfsmnt): rootfs if it is the task's root mount, else volume.
 */
static __noinline __u8 path_fs(struct scratch *s, struct task_struct *task, struct dentry *dentry,
			       struct vfsmount *vfsmnt, int len)
{
	struct parse_ctx *p = &s->parse;
	struct descend_ctx *c = &s->descend;
	struct mount *mnt = real_mount(vfsmnt);

	p->len = len;
	p->start = p->depth = p->up = 0;
	bpf_loop(len + 1, parse_step, NULL, 0);
	c->dentry = dentry;
	c->mnt = mnt;
	c->root_dentry = BPF_CORE_READ(task, fs, root.dentry);
	c->root_mnt = real_mount(BPF_CORE_READ(task, fs, root.mnt));
	c->up = p->up;
	c->i = c->crossed = 0;
	c->n = p->depth;
	if (c->up > 0)
		bpf_loop(MAX_CROSSINGS + (c->up & (UPATH_LEN - 1)), up_step, NULL, 0);
	mnt = c->mnt;
	c->best = NULL;
	c->best_d = MAX_MP_DEPTH + 1;
	c->head = (void *)mnt + bpf_core_field_offset(struct mount, mnt_mounts);
	c->pos = BPF_CORE_READ(mnt, mnt_mounts.next);
	bpf_loop(MAX_CROSSINGS * MAX_CHILDREN, child_step, NULL, 0);
	return c->mnt == c->root_mnt ? PODLOCK_FS_ROOTFS : PODLOCK_FS_VOLUME;
}

/*
 * A path argument made absolute into scratch.out, and the mount it lands on
 * (the return value): relative paths are joined to the directory of dfd (or
 * the cwd), resolved in the kernel because short-lived processes like tar are
 * gone before user space could read /proc/PID/cwd. "." and ".." are left in
 * the text for user space to fold. A global function, so the verifier checks it
 * once rather than once per state of its callers.
 */
__noinline int user_path(long dfd, unsigned long upath_addr)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const char *upath = (const char *)upath_addr;
	struct scratch *s = get_scratch();
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	char *out;
	long n;
	__u8 fs;
	int len, off;

	if (!s)
		return PODLOCK_FS_UNKNOWN;
	out = s->out;
	out[0] = 0;
	n = bpf_probe_read_user_str(s->upath, UPATH_LEN, upath);
	if (n <= 1)
		return PODLOCK_FS_UNKNOWN;
	len = n - 1;
	if (s->upath[0] == '/') {
		dentry = task->fs->root.dentry;
		vfsmnt = task->fs->root.mnt;
	} else if ((int)dfd == AT_FDCWD) {
		dentry = task->fs->pwd.dentry;
		vfsmnt = task->fs->pwd.mnt;
	} else {
		struct file *f = fd_file(task, (int)dfd);

		if (!f) { /* closed meanwhile: the bare argument */
			raw_text(s, upath, out);
			return PODLOCK_FS_UNKNOWN;
		}
		dentry = f->f_path.dentry;
		vfsmnt = f->f_path.mnt;
	}
	fs = path_fs(s, task, dentry, vfsmnt, len);
	if (s->upath[0] == '/') {
		if (len < PODLOCK_PATH_LEN)
			bpf_probe_read_kernel_str(out, PODLOCK_PATH_LEN, s->upath);
		else
			tail_path(s, len, out);
		return fs;
	}
	/* the directory's path, then '/' and the argument */
	if (PODLOCK_PATH_LEN - 2 - len < CUT_MARK_LEN) {
		tail_path(s, len, out);
		return fs;
	}
	off = dir_path(s, task, dentry, vfsmnt, PODLOCK_PATH_LEN - 2 - len);
	s->buf[HALF] = '/';
	bpf_probe_read_kernel_str(&s->buf[HALF + 1], PODLOCK_PATH_LEN, s->upath);
	bpf_probe_read_kernel_str(out, PODLOCK_PATH_LEN, &s->buf[off & (2 * HALF - 1)]);
	return fs;
}

static __always_inline int is_regular(struct file *f)
{
	return (f->f_inode->i_mode & S_IFMT) == S_IFREG;
}

static __always_inline __u8 fs_of(struct task_struct *task, struct file *f)
{
	return f->f_path.mnt == task->fs->root.mnt
		       ? PODLOCK_FS_ROOTFS
		       : PODLOCK_FS_VOLUME;
}

/* ---- session tracking ------------------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	struct podlock_label *lbl;

	if (ptgid == ctgid)
		return 0; /* a new thread: the process is labelled already */
	lbl = bpf_map_lookup_elem(&procs, &ptgid);
	if (!lbl)
		return 0;
	/* children inherit the label; never re-derived from parents later */
	count_unlabelled(bpf_map_update_elem(&procs, &ctgid, lbl, BPF_ANY));
	return 0;
}

static __always_inline __u8 exec_origin(struct task_struct *task, struct file *f)
{
	struct dentry *dentry = BPF_CORE_READ(f, f_path.dentry);
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	struct vfsmount *vfsmnt = BPF_CORE_READ(f, f_path.mnt);
	char prefix[6] = {};

	bpf_probe_read_kernel(prefix, sizeof(prefix), BPF_CORE_READ(dentry, d_name.name));
	if (prefix[0] == 'm' && prefix[1] == 'e' && prefix[2] == 'm' && prefix[3] == 'f' &&
	    prefix[4] == 'd' && prefix[5] == ':')
		return PODLOCK_ORIGIN_MEMFD;
	if (vfsmnt == BPF_CORE_READ(task, fs, root.mnt)) {
		struct ovl_inode *oi;

		if (BPF_CORE_READ(inode, i_sb, s_magic) != OVERLAYFS_SUPER_MAGIC)
			return PODLOCK_ORIGIN_UNKNOWN;
		oi = (void *)inode - bpf_core_field_offset(struct ovl_inode, vfs_inode);
		/* an upper dentry means the file was created or copied up after start */
		return BPF_CORE_READ(oi, __upperdentry) ? PODLOCK_ORIGIN_UPPER
							: PODLOCK_ORIGIN_IMAGE;
	}
	if ((BPF_CORE_READ(vfsmnt, mnt_flags) & MNT_RDONLY) ||
	    (BPF_CORE_READ(inode, i_sb, s_flags) & SB_RDONLY))
		return PODLOCK_ORIGIN_UNKNOWN; /* read-only volume: nobody wrote it from here */
	return PODLOCK_ORIGIN_VOLUME;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct podlock_label *lbl = bpf_map_lookup_elem(&procs, &tgid);
	struct podlock_label fresh = {};
	struct podlock_exec_event *ev;
	struct scratch *s;
	unsigned long start, end, len;
	struct file *f;

	if (!lbl) {
		__u64 cg = bpf_get_current_cgroup_id();
		struct podlock_cgroup *c = bpf_map_lookup_elem(&containers, &cg);

		if (!c)
			return 0; /* the host */
		if (BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum) == host_mnt_ns)
			return 0; /* runc's machinery, not yet inside the container */
		fresh.cgroup_id = cg;
		/* The first process to exec in a container cgroup is its own tree;
		 * anyone entering later came from outside: an exec session. */
		if (__sync_val_compare_and_swap(&c->init_claimed, 0, 1) == 0) {
			fresh.session = PODLOCK_SESSION_CONTAINER;
		} else {
			fresh.session = PODLOCK_SESSION_EXEC;
			fresh.session_id = tgid;
		}
		count_unlabelled(bpf_map_update_elem(&procs, &tgid, &fresh, BPF_ANY));
		lbl = bpf_map_lookup_elem(&procs, &tgid);
		if (!lbl)
			return 0;
	}

	s = get_scratch();
	if (!s)
		return 0;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop();
		return 0;
	}
	fill_hdr(&ev->hdr, task, PODLOCK_EV_EXEC, lbl);
	f = bprm->file;
	ev->origin = exec_origin(task, f);
	ev->_pad[0] = ev->_pad[1] = ev->_pad[2] = 0;
	file_path(s, task, f, ev->exepath);
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > PODLOCK_ARGS_LEN - 1)
		len = PODLOCK_ARGS_LEN - 1;
	ev->args_len = len;
	if (bpf_probe_read_user(ev->args, len & (PODLOCK_ARGS_LEN - 1), (void *)start) < 0)
		ev->args_len = 0;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct podlock_label *lbl = bpf_map_lookup_elem(&procs, &tgid);
	struct podlock_exit_event *ev;

	if (!lbl)
		return 0;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; /* a thread ended; the process lives on */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (ev) {
		fill_hdr(&ev->hdr, task, PODLOCK_EV_EXIT, lbl);
		ev->exit_code = BPF_CORE_READ(task, exit_code);
		ev->_pad = 0;
		bpf_ringbuf_submit(ev, 0);
	} else {
		count_drop();
	}
	bpf_map_delete_elem(&procs, &tgid);
	return 0;
}

/* ---- container cgroups ------------------------------------------------ */

static __always_inline int is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

struct hex_ctx {
	int run;
	int found; /* 1 container, -1 not */
};

static long hex_step(__u32 i, void *data)
{
	struct hex_ctx *c = data;
	struct scratch *s = get_scratch();
	char ch;

	if (!s)
		return 1;
	ch = s->name[i & 127];
	if (ch == 0) {
		c->found = -1;
		return 1;
	}
	c->run = is_hex(ch) ? c->run + 1 : 0;
	if (c->run < 64)
		return 0;
	c->found = 1;
	/* `conmon-<id>`: the runtime's monitor, not the container */
	if (i >= 70 && s->name[(i - 64) & 127] == '-' && s->name[(i - 65) & 127] == 'n' &&
	    s->name[(i - 66) & 127] == 'o' && s->name[(i - 67) & 127] == 'm' &&
	    s->name[(i - 68) & 127] == 'n' && s->name[(i - 69) & 127] == 'o' &&
	    s->name[(i - 70) & 127] == 'c')
		c->found = -1;
	return 1;
}

/* A container runtime names the leaf cgroup after the 64-hex container id
 * (`<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
 * `libpod-<id>.scope`); `*-conmon-<id>.scope` is the runtime's monitor. */
static __always_inline int looks_like_container(void)
{
	struct hex_ctx c = {};

	bpf_loop(128, hex_step, &c, 0);
	return c.found == 1;
}

static __always_inline int on_dfl_hierarchy(struct cgroup *cgrp)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return BPF_CORE_READ(cgrp, root) == BPF_CORE_READ(task, cgroups, dfl_cgrp, root);
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(on_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	struct podlock_cgroup fresh = {};
	struct podlock_label none = {};
	struct podlock_cgroup_event *ev;
	struct scratch *s = get_scratch();
	__u64 id;

	if (!s || !on_dfl_hierarchy(cgrp))
		return 0;
	if (bpf_probe_read_kernel_str(s->name, 128, BPF_CORE_READ(cgrp, kn, name)) <= 0)
		return 0;
	if (!looks_like_container())
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	/* known before any process can join it: no race with the container's init */
	count_unlabelled(bpf_map_update_elem(&containers, &id, &fresh, BPF_ANY));
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop();
		return 0;
	}
	none.cgroup_id = id;
	fill_hdr(&ev->hdr, bpf_get_current_task_btf(), PODLOCK_EV_CGROUP, &none);
	bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), path);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(on_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	__u64 id = BPF_CORE_READ(cgrp, kn, id);

	bpf_map_delete_elem(&containers, &id);
	return 0;
}

/* ---- file operations ---------------------------------------------------- */

/* A reported call's operation and flags, from the syscall number and the
 * registers alone: no map lookup and no user memory read. 0 = not reported. */
static __always_inline __u8 file_op(struct pt_regs *regs, long nr, __u32 *flags)
{
	switch (nr) {
	case NR_open:
		*flags = regs->si;
		return PODLOCK_OP_OPEN;
	case NR_creat:
		*flags = 01 | O_CREAT | O_TRUNC;
		return PODLOCK_OP_OPEN;
	case NR_openat:
		*flags = regs->dx;
		return PODLOCK_OP_OPEN;
	case NR_openat2:
		*flags = O_ACCMODE; /* (the real flags are in user memory: read later) */
		return PODLOCK_OP_OPEN;
	case NR_rename:
	case NR_renameat:
	case NR_renameat2:
		return PODLOCK_OP_RENAME;
	case NR_unlink:
		return PODLOCK_OP_UNLINK;
	case NR_unlinkat:
		return regs->dx & AT_REMOVEDIR ? 0 : PODLOCK_OP_UNLINK;
	case NR_mkdir:
		*flags = regs->si;
		return PODLOCK_OP_MKDIR;
	case NR_mkdirat:
		*flags = regs->dx;
		return PODLOCK_OP_MKDIR;
	case NR_link:
	case NR_linkat:
		return PODLOCK_OP_LINK;
	case NR_symlink:
	case NR_symlinkat:
		return PODLOCK_OP_SYMLINK;
	case NR_chmod:
	case NR_fchmod:
		*flags = regs->si;
		return PODLOCK_OP_CHMOD;
	case NR_fchmodat:
	case NR_fchmodat2:
		*flags = regs->dx;
		return PODLOCK_OP_CHMOD;
	}
	return 0;
}

static __noinline int file_event(struct pt_regs *regs, long nr, long ret, __u32 flags,
				 struct podlock_label *lbl)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct scratch *s = get_scratch();
	struct podlock_file_event *ev;
	unsigned long a0 = regs->di, a1 = regs->si, a2 = regs->dx, a3 = regs->r10;
	const char *path, *target = NULL;
	long dfd, tdfd = AT_FDCWD;
	__u8 op;

	if (!s)
		return 0;
	op = file_op(regs, nr, &flags);
	if (nr == NR_openat2) {
		__u64 how_flags = 0;

		bpf_probe_read_user(&how_flags, sizeof(how_flags), (void *)a2);
		flags = how_flags;
		if (!(flags & (O_ACCMODE | O_CREAT | O_TRUNC)))
			return 0; /* read-only open */
	}

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop();
		return 0;
	}
	fill_hdr(&ev->hdr, task, PODLOCK_EV_FILE, lbl);
	ev->result = ret;
	ev->flags = flags;
	ev->op = op;
	ev->fs = PODLOCK_FS_UNKNOWN;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	ev->path[0] = 0;
	ev->target[0] = 0;

	/* an open file, when there is one, gives the canonical path and the mount */
	if ((op == PODLOCK_OP_OPEN && ret >= 0) || nr == NR_fchmod) {
		struct file *f;

		if (ret < 0) /* a refused fchmod: nothing to name */
			goto submit;
		f = fd_file(task, op == PODLOCK_OP_OPEN ? (long)ret : (long)a0);
		if (!f || !is_regular(f)) {
			bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
			return 0;
		}
		ev->fs = fs_of(task, f);
		file_path(s, task, f, ev->path);
		goto submit;
	}
	/* else the path arguments: (directory fd, path) for the path and the target.
	 * One call of each helper below: the verifier checks a subprogram once per
	 * call site. */
	switch (nr) {
	case NR_open:
	case NR_creat:
	case NR_rename:
	case NR_link:
	case NR_unlink:
	case NR_mkdir:
	case NR_chmod:
		dfd = AT_FDCWD;
		path = (const char *)a0;
		tdfd = AT_FDCWD;
		target = (const char *)a1;
		break;
	case NR_symlink:
		dfd = AT_FDCWD;
		path = (const char *)a1;
		target = (const char *)a0;
		break;
	case NR_symlinkat:
		dfd = a1;
		path = (const char *)a2;
		target = (const char *)a0;
		break;
	case NR_renameat:
	case NR_renameat2:
	case NR_linkat:
		dfd = a0;
		path = (const char *)a1;
		tdfd = a2;
		target = (const char *)a3;
		break;
	default: /* openat, openat2, unlinkat, mkdirat, fchmodat, fchmodat2 */
		dfd = a0;
		path = (const char *)a1;
		break;
	}
	/* rename and link: both paths are on one mount, or the call failed (EXDEV) */
	ev->fs = user_path(dfd, (unsigned long)path);
	bpf_probe_read_kernel_str(ev->path, sizeof(ev->path), s->out);
	if (op == PODLOCK_OP_SYMLINK) {
		raw_text(s, target, ev->target);
	} else if (op == PODLOCK_OP_RENAME || op == PODLOCK_OP_LINK) {
		user_path(tdfd, (unsigned long)target);
		bpf_probe_read_kernel_str(ev->target, sizeof(ev->target), s->out);
	}
submit:
	bpf_ringbuf_submit(ev, file_wakeup());
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax; /* direct BTF loads: no helper call on every syscall */
	__u32 tgid, flags = 0;
	struct podlock_label *lbl;
	__u8 op;

	/* cheapest tests first: most syscalls are not file operations we report,
	 * most opens only read, and most processes are the host's */
	op = file_op(regs, nr, &flags);
	if (!op)
		return 0;
	if (op == PODLOCK_OP_OPEN && !(flags & (O_ACCMODE | O_CREAT | O_TRUNC)))
		return 0; /* read-only open */
	if (op == PODLOCK_OP_CHMOD && !(flags & 0111))
		return 0; /* only modes that make something executable */
	if (ret < 0 && ret != -EROFS && ret != -EACCES)
		return 0; /* other failures changed nothing and refused nothing */
	tgid = bpf_get_current_pid_tgid() >> 32;
	lbl = bpf_map_lookup_elem(&procs, &tgid);
	if (!lbl)
		return 0; /* the host */
	return file_event(regs, nr, ret, flags, lbl);
}
