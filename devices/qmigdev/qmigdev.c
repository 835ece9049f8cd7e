// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmigdev - a migratable mediated PCI test device for qmp-mig.
 *
 * Every instance is an emulated-IOMMU vfio device (an mdev) that looks to the
 * guest like a small PCI function:
 *
 *   BAR0  4 KiB   control registers, trapped (read/write on the vfio fd)
 *   BAR2  64 KiB  device memory, kernel pages, also mmap-able
 *
 * Three DMA engines, all going through vfio_dma_rw() so that the IOMMU
 * type1 dirty bitmap sees every write into guest RAM:
 *   - one-shot copy guest <-> BAR2 (synchronous, from the BAR0 write);
 *   - continuous: a worker writes 64-byte sequence-numbered records into a
 *     guest ring;
 *   - P2P: the worker writes records into a peer instance's BAR2 window.
 *
 * Migration uAPI v2 (STOP_COPY, optional P2P and PRE_COPY) with a
 * sectioned, checksummed stream, per-instance counters and fault knobs in
 * sysfs.  See README.md next to this file for the register map, the stream
 * format and the fault list.
 *
 * Locking (outer to inner):
 *   q->lock (mutex)          device state, registers, config space, faults,
 *                            migration files, arc log.  Every DMA is issued
 *                            with it held, after re-checking the state, so
 *                            no DMA can happen once an arc into a state that
 *                            forbids it has completed.
 *   qmig_list_lock (mutex)   list of instances (peer lookup for P2P)
 *   m->lock (mutex)          one migration file's buffers
 *   q->mem_lock (spinlock)   kernel-side accesses to another or this
 *                            instance's BAR2 that must be atomic
 *                            (snapshots, restore, direct P2P, RX scan)
 *   q->range_lock (spinlock) engine IOVA ranges mirrored for dma_unmap
 * vfio_dma_rw() takes the IOMMU locks and mmap_lock below q->lock; nothing
 * of ours is taken under mmap_lock (mmap does not take q->lock) and the
 * dma_unmap callback takes only range_lock.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/anon_inodes.h>
#include <linux/atomic.h>
#include <linux/bitmap.h>
#include <linux/crc32.h>
#include <linux/delay.h>
#include <linux/device.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/math64.h>
#include <linux/mdev.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci_regs.h>
#include <linux/sched/mm.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/unaligned.h>
#include <linux/vfio.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#define QMIG_NAME		"qmigdev"
#define QMIG_VERSION_STR	"1.0"

/* PCI identity: Red Hat's 1af4:10f0-10ff "experimental, no registration" range */
#define QMIG_PCI_VENDOR		0x1af4
#define QMIG_PCI_DEVICE		0x10f7
#define QMIG_PCI_REVISION	0x01
#define QMIG_PCI_CLASS		0xff0000	/* base ff: unassigned class */

#define QMIG_CFG_SIZE		256
#define QMIG_BAR0_SIZE		SZ_4K
#define QMIG_BAR2_SIZE		SZ_64K

/* vfio region offsets: index << 40, as vfio-pci does */
#define QMIG_OFF_SHIFT		40
#define QMIG_OFF_MASK		((1ULL << QMIG_OFF_SHIFT) - 1)
#define QMIG_INDEX_TO_OFF(i)	((u64)(i) << QMIG_OFF_SHIFT)

/* ---- BAR0 register map (little endian, 32-bit registers) ---- */
#define QMIG_REG_ID		0x000	/* RO  'QMIG' */
#define QMIG_REG_VERSION	0x004	/* RO  major << 16 | minor */
#define QMIG_REG_STATUS		0x008	/* RO */
#define QMIG_REG_CTRL		0x00c	/* WO */
#define QMIG_REG_SCRATCH	0x010	/* RW, migrated */
#define QMIG_REG_TAG		0x014	/* RW, 16 bits, source id in records */
#define QMIG_REG_INTERVAL_US	0x018	/* RW  worker period */
#define QMIG_REG_MIG_STATE	0x01c	/* RO  vfio migration state */
#define QMIG_REG_DMA_SRC	0x020	/* RW 64 */
#define QMIG_REG_DMA_DST	0x028	/* RW 64 */
#define QMIG_REG_DMA_LEN	0x030	/* RW */
#define QMIG_REG_DMA_CMD	0x034	/* RW  write starts a one-shot DMA */
#define QMIG_REG_DMA_COUNT	0x038	/* RO */
#define QMIG_REG_DMA_RESULT	0x03c	/* RO  errno of the last one-shot DMA */
#define QMIG_REG_CONT_BASE	0x040	/* RW 64 ring IOVA */
#define QMIG_REG_CONT_SIZE	0x048	/* RW  ring bytes */
#define QMIG_REG_CONT_CTRL	0x04c	/* RW  bit0 enable */
#define QMIG_REG_CONT_SEQ	0x050	/* RO 64 next sequence number */
#define QMIG_REG_CONT_HEAD	0x058	/* RO  next slot */
#define QMIG_REG_CONT_ERRORS	0x05c	/* RO */
#define QMIG_REG_P2P_TARGET	0x060	/* RW 64 IOVA of the peer's window */
#define QMIG_REG_P2P_SLOTS	0x068	/* RW  1..64 */
#define QMIG_REG_P2P_CTRL	0x06c	/* RW */
#define QMIG_REG_P2P_SEQ	0x070	/* RO 64 next sequence number */
#define QMIG_REG_P2P_SENT	0x078	/* RO */
#define QMIG_REG_P2P_ERRORS	0x07c	/* RO */
#define QMIG_REG_RECORDS	0x080	/* RO 64 continuous records written */
#define QMIG_REG_P2P_RECEIVED	0x088	/* RO  records seen in own window */
#define QMIG_REG_P2P_LAST_PATH	0x08c	/* RO  1 dma_rw, 2 direct */
#define QMIG_REG_P2P_RX_LAST	0x090	/* RO 64 highest seq seen in window */

#define QMIG_ID_MAGIC		0x47494d51	/* "QMIG" */
#define QMIG_HW_VERSION		0x00010000

/* STATUS: sticky bits (stored, migrated) */
#define QMIG_ST_DMA_DONE	BIT(0)
#define QMIG_ST_DMA_ERR		BIT(1)
#define QMIG_ST_CONT_ERR	BIT(2)
#define QMIG_ST_P2P_ERR		BIT(3)
#define QMIG_ST_UNMAPPED	BIT(4)
#define QMIG_ST_STICKY		GENMASK(4, 0)
/* STATUS: live bits (computed on read) */
#define QMIG_ST_CONT_ON		BIT(8)
#define QMIG_ST_P2P_TX_ON	BIT(9)
#define QMIG_ST_P2P_RX_ON	BIT(10)
#define QMIG_ST_DMA_ALLOWED	BIT(11)
#define QMIG_ST_P2P_ALLOWED	BIT(12)
#define QMIG_ST_STATE_SHIFT	16

#define QMIG_CTRL_ENGINE_RESET	BIT(0)
#define QMIG_CTRL_CLEAR_STATUS	BIT(1)

#define QMIG_DMA_CMD_TO_DEV	1	/* SRC = guest IOVA, DST = BAR2 offset */
#define QMIG_DMA_CMD_FROM_DEV	2	/* SRC = BAR2 offset, DST = guest IOVA */

#define QMIG_CONT_EN		BIT(0)
#define QMIG_CONT_MAX_RING	SZ_16M

#define QMIG_P2P_TX		BIT(0)
#define QMIG_P2P_MODE_SHIFT	1
#define QMIG_P2P_MODE_MASK	(3U << QMIG_P2P_MODE_SHIFT)
#define QMIG_P2P_MODE_AUTO	0
#define QMIG_P2P_MODE_DMA_RW	1
#define QMIG_P2P_MODE_DIRECT	2
#define QMIG_P2P_RX		BIT(4)
#define QMIG_P2P_CTRL_MASK	(QMIG_P2P_TX | QMIG_P2P_MODE_MASK | QMIG_P2P_RX)

#define QMIG_PATH_DMA_RW	1
#define QMIG_PATH_DIRECT	2

#define QMIG_INTERVAL_MIN_US	100
#define QMIG_INTERVAL_MAX_US	1000000

/* ---- records ---- */
#define QMIG_REC_SIZE		64
#define QMIG_REC_MAGIC		0x43455251	/* "QREC" */
#define QMIG_REC_KIND_CONT	1
#define QMIG_REC_KIND_P2P	2
#define QMIG_RX_OFF		0xf000		/* P2P receive window in BAR2 */
#define QMIG_RX_SLOTS		64

struct qmig_record {
	__le32 magic;
	__le16 kind;
	__le16 src;
	__le64 seq;
	__le64 time_ns;		/* CLOCK_REALTIME of the writer */
	__le32 mig_state;	/* writer's migration state */
	__le32 slot;
	u8 fill[28];		/* fill[i] = (u8)(seq + i) */
	__le32 crc;		/* CRC-32 (zlib) of bytes 0..59 */
} __packed;
static_assert(sizeof(struct qmig_record) == QMIG_REC_SIZE);
static_assert(QMIG_RX_OFF + QMIG_RX_SLOTS * QMIG_REC_SIZE == QMIG_BAR2_SIZE);

/* ---- migration stream ---- */
#define QMIG_SEC_MAGIC		0x53474d51	/* "QMGS" */
#define QMIG_STREAM_VERSION	1
#define QMIG_SEC_HEADER		1
#define QMIG_SEC_BAR2		2
#define QMIG_SEC_DEVICE		3
#define QMIG_SEC_END		4
#define QMIG_HDR_HAS_BAR2	BIT(0)
#define QMIG_HDR_PRECOPY	BIT(1)
#define QMIG_HDR_FLAGS		(QMIG_HDR_HAS_BAR2 | QMIG_HDR_PRECOPY)
#define QMIG_CHUNK		SZ_4K
#define QMIG_NCHUNKS		(QMIG_BAR2_SIZE / QMIG_CHUNK)

struct qmig_sec {
	__le32 magic;
	__le16 type;
	__le16 flags;		/* 0 */
	__le32 len;		/* payload bytes that follow */
	__le32 crc;		/* CRC-32 (zlib) of the payload */
} __packed;

struct qmig_stream_hdr {
	__le32 version;
	__le32 flags;
	__le32 type;		/* mdev type code, must match the destination */
	__le32 cfg_size;
	__le32 bar0_size;
	__le32 bar2_size;
	__le32 chunk_size;
	__le32 dev_size;	/* payload size of the DEVICE section */
} __packed;

struct qmig_chunk_hdr {
	__le32 offset;		/* in BAR2, multiple of QMIG_CHUNK */
	__le32 reserved;
} __packed;

struct qmig_stream_end {
	__le64 total_len;	/* bytes of the whole stream, END included */
	__le32 nsec;		/* sections before END */
	__le32 stream_crc;	/* CRC-32 (zlib) of every byte before END */
} __packed;

/*
 * Engine registers.  The X-macro lists drive the in-memory struct, the
 * DEVICE section layout and the conversions between them.
 */
#define QMIG_REGS64(X) \
	X(dma_src) X(dma_dst) X(cont_base) X(cont_seq) \
	X(p2p_target) X(p2p_seq) X(records) X(p2p_rx_last)
#define QMIG_REGS32(X) \
	X(status) X(scratch) X(tag) X(interval_us) \
	X(dma_len) X(dma_cmd) X(dma_count) X(dma_result) \
	X(cont_size) X(cont_ctrl) X(cont_head) X(cont_errors) \
	X(p2p_slots) X(p2p_ctrl) X(p2p_sent) X(p2p_errors) \
	X(p2p_received) X(p2p_last_path)

struct qmig_regs {
#define X(n) u64 n;
	QMIG_REGS64(X)
#undef X
#define X(n) u32 n;
	QMIG_REGS32(X)
#undef X
	u64 rx_slot_seq[QMIG_RX_SLOTS];	/* last seq seen per window slot */
};

struct qmig_dev_image {
	u8 config[QMIG_CFG_SIZE];
#define X(n) __le64 n;
	QMIG_REGS64(X)
#undef X
#define X(n) __le32 n;
	QMIG_REGS32(X)
#undef X
	__le64 rx_slot_seq[QMIG_RX_SLOTS];
} __packed;

#define QMIG_SEC_SIZE(pay)	(sizeof(struct qmig_sec) + (pay))
#define QMIG_HDR_PAY		sizeof(struct qmig_stream_hdr)
#define QMIG_CHUNK_PAY		(sizeof(struct qmig_chunk_hdr) + QMIG_CHUNK)
#define QMIG_DEV_PAY		sizeof(struct qmig_dev_image)
#define QMIG_END_PAY		sizeof(struct qmig_stream_end)
#define QMIG_MAX_PAY		QMIG_CHUNK_PAY
#define QMIG_FULL_STREAM	(QMIG_SEC_SIZE(QMIG_HDR_PAY) + \
				 QMIG_NCHUNKS * QMIG_SEC_SIZE(QMIG_CHUNK_PAY) + \
				 QMIG_SEC_SIZE(QMIG_DEV_PAY) + \
				 QMIG_SEC_SIZE(QMIG_END_PAY))
static_assert(QMIG_DEV_PAY <= QMIG_MAX_PAY);

/* ---- host-side statistics (sysfs, not migrated, not reset by the device) */
#define QMIG_STATS(X) \
	X(dma_records) X(dma_ops) X(dma_errors) \
	X(p2p_sent) X(p2p_direct) X(p2p_received) \
	X(writes_while_stopped) X(p2p_while_quiesced) X(rx_while_stopped) \
	X(unmap_hits) X(resets) X(resets_refused) \
	X(saves) X(loads) X(load_errors) X(arc_failures)

struct qmig_stats {
#define X(n) atomic64_t n;
	QMIG_STATS(X)
#undef X
};

enum { QMIG_FAIL_STAY, QMIG_FAIL_ERROR };
enum { QMIG_LIE_PRECOPY_OFF, QMIG_LIE_PRECOPY_ZERO, QMIG_LIE_PRECOPY_STUCK };
enum { QMIG_REFUSE_OFF, QMIG_REFUSE_FAIL, QMIG_REFUSE_IGNORE };

struct qmig_faults {
	bool arc_set;
	int arc_cur;		/* -1: any */
	int arc_next;		/* -1: any */
	int arc_mode;
	bool arc_once;
	u32 arc_hits;
	bool dma_after_stop;
	bool p2p_in_running_p2p;
	bool corrupt_stream;
	bool truncate_stream;
	bool drop_state;
	bool stale_state_on_close;
	s64 lie_data_size;	/* < 0: off */
	int lie_precopy_info;
	u32 delay_save_ms;
	int refuse_reset;
};

#define QMIG_ARC_LOG		64
#define QMIG_DELAY_MAX_MS	60000

struct qmig_arc {
	u8 cur;
	u8 next;
	bool ok;
};

struct qmig_type {
	struct mdev_type type;
	u32 flags;		/* VFIO_MIGRATION_* the type supports */
	u32 code;		/* carried in the stream header */
};

#define QMIG_UNMAP_CONT		BIT(0)
#define QMIG_UNMAP_P2P		BIT(1)

struct qmig_migf;

struct qmig_state {
	struct vfio_device vdev;	/* must be first: vfio_alloc_device() */
	struct mdev_device *mdev;
	const struct qmig_type *type;
	struct list_head node;		/* qmig_list */

	struct mutex lock;
	enum vfio_device_mig_state state;	/* WRITE_ONCE under lock */
	bool opened;				/* WRITE_ONCE under lock */
	struct mm_struct *owner_mm;		/* opener, mmgrab()ed; peers compare */
	u64 bar2_gpa;				/* WRITE_ONCE under lock */
	u8 cfg[QMIG_CFG_SIZE];
	struct qmig_regs r;
	struct qmig_faults f;
	struct qmig_migf *saving_migf;
	struct qmig_migf *resuming_migf;
	struct delayed_work work;
	struct qmig_arc arcs[QMIG_ARC_LOG];
	unsigned int arc_head;
	unsigned int arc_count;
	u16 default_tag;
	u8 *bounce;			/* QMIG_BAR2_SIZE, used under lock */

	spinlock_t mem_lock;
	u8 *mem;			/* BAR2, vmalloc_user() */

	spinlock_t range_lock;
	u64 cont_rbase, cont_rlen;
	u64 p2p_rbase, p2p_rlen;
	atomic_t unmap_pending;

	struct qmig_stats stats;
};

struct qmig_migf {
	struct file *filp;
	struct qmig_state *q;		/* holds a reference on q->vdev */
	struct mutex lock;
	bool disabled;

	/* saving */
	u8 *buf;
	size_t cap, len, off;		/* pending bytes are buf[off..len) */
	u64 produced, consumed;
	u64 initial_end;		/* produced offset ending the initial data */
	u32 crc;			/* running crc32_le state, seeded ~0 */
	u32 nsec;
	bool has_bar2;
	bool final;			/* STOP_COPY data appended */
	u8 *shadow;			/* BAR2 as streamed so far */

	/* resuming */
	u8 sec_buf[sizeof(struct qmig_sec)];
	u32 sec_have;
	u8 *payload;
	u32 pay_len, pay_have;
	u16 sec_type;
	bool got_hdr, got_dev, got_end, broken;
	u32 stream_flags;
	u64 received;
	DECLARE_BITMAP(chunks, QMIG_NCHUNKS);
	u8 *stage_bar2;
	struct qmig_dev_image stage_dev;
};

/* ---- module globals ---- */

static unsigned int max_instances = 16;
module_param(max_instances, uint, 0444);
MODULE_PARM_DESC(max_instances, "Maximum number of qmigdev instances (default 16)");

static unsigned int default_interval_us = 4000;
module_param(default_interval_us, uint, 0644);
MODULE_PARM_DESC(default_interval_us,
		 "Initial worker period in microseconds (default 4000, rounded up to a jiffy)");

static struct workqueue_struct *qmig_wq;
static LIST_HEAD(qmig_list);
static DEFINE_MUTEX(qmig_list_lock);
static atomic_t qmig_tag_seq = ATOMIC_INIT(0);

static struct class *qmig_class;
static struct device qmig_parent_dev;
static struct mdev_parent qmig_parent;

static const struct vfio_device_ops qmig_dev_ops;
static const struct file_operations qmig_save_fops;
static const struct file_operations qmig_resume_fops;

static struct qmig_type qmig_types[] = {
	{ .type.sysfs_name = "full", .type.pretty_name = "qmigdev STOP_COPY+P2P+PRE_COPY",
	  .flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
	  .code = 1 },
	{ .type.sysfs_name = "p2p", .type.pretty_name = "qmigdev STOP_COPY+P2P",
	  .flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P, .code = 2 },
	{ .type.sysfs_name = "precopy", .type.pretty_name = "qmigdev STOP_COPY+PRE_COPY",
	  .flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY, .code = 3 },
	{ .type.sysfs_name = "basic", .type.pretty_name = "qmigdev STOP_COPY",
	  .flags = VFIO_MIGRATION_STOP_COPY, .code = 4 },
};

static struct mdev_type *qmig_mdev_types[] = {
	&qmig_types[0].type,
	&qmig_types[1].type,
	&qmig_types[2].type,
	&qmig_types[3].type,
};

static const char * const qmig_state_names[] = {
	[VFIO_DEVICE_STATE_ERROR] = "ERROR",
	[VFIO_DEVICE_STATE_STOP] = "STOP",
	[VFIO_DEVICE_STATE_RUNNING] = "RUNNING",
	[VFIO_DEVICE_STATE_STOP_COPY] = "STOP_COPY",
	[VFIO_DEVICE_STATE_RESUMING] = "RESUMING",
	[VFIO_DEVICE_STATE_RUNNING_P2P] = "RUNNING_P2P",
	[VFIO_DEVICE_STATE_PRE_COPY] = "PRE_COPY",
	[VFIO_DEVICE_STATE_PRE_COPY_P2P] = "PRE_COPY_P2P",
};

/* Config space bits the guest may change. */
static const u8 qmig_cfg_wmask[QMIG_CFG_SIZE] = {
	[PCI_COMMAND] = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
	[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8,
	[PCI_CACHE_LINE_SIZE] = 0xff,
	[PCI_LATENCY_TIMER] = 0xff,
	/* BAR0: 4 KiB, bits 31:12 */
	[PCI_BASE_ADDRESS_0 + 1] = 0xf0,
	[PCI_BASE_ADDRESS_0 + 2] = 0xff,
	[PCI_BASE_ADDRESS_0 + 3] = 0xff,
	/* BAR2: 64 KiB, bits 31:16 */
	[PCI_BASE_ADDRESS_2 + 2] = 0xff,
	[PCI_BASE_ADDRESS_2 + 3] = 0xff,
	[PCI_INTERRUPT_LINE] = 0xff,
};

/* ---- small helpers ---- */

static const char *qmig_state_name(unsigned int s)
{
	if (s < ARRAY_SIZE(qmig_state_names) && qmig_state_names[s])
		return qmig_state_names[s];
	return "?";
}

static int qmig_state_from_name(const char *s)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(qmig_state_names); i++)
		if (qmig_state_names[i] && !strcasecmp(s, qmig_state_names[i]))
			return i;
	return -EINVAL;
}

/* Mirrors the state/flags requirements of vfio_mig_get_next_state(). */
static bool qmig_state_supported(enum vfio_device_mig_state s, u32 flags)
{
	u32 need;

	switch (s) {
	case VFIO_DEVICE_STATE_ERROR:
		return true;
	case VFIO_DEVICE_STATE_RUNNING_P2P:
		need = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
		break;
	case VFIO_DEVICE_STATE_PRE_COPY:
		need = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY;
		break;
	case VFIO_DEVICE_STATE_PRE_COPY_P2P:
		need = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
		       VFIO_MIGRATION_PRE_COPY;
		break;
	case VFIO_DEVICE_STATE_STOP:
	case VFIO_DEVICE_STATE_RUNNING:
	case VFIO_DEVICE_STATE_STOP_COPY:
	case VFIO_DEVICE_STATE_RESUMING:
		need = VFIO_MIGRATION_STOP_COPY;
		break;
	default:
		return false;
	}
	return (flags & need) == need;
}

static bool qmig_st_running(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_RUNNING ||
	       s == VFIO_DEVICE_STATE_RUNNING_P2P ||
	       s == VFIO_DEVICE_STATE_PRE_COPY ||
	       s == VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

static bool qmig_st_p2p_quiesced(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_RUNNING_P2P ||
	       s == VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

static bool qmig_st_precopy(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_PRE_COPY ||
	       s == VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

static bool qmig_st_saving(enum vfio_device_mig_state s)
{
	return qmig_st_precopy(s) || s == VFIO_DEVICE_STATE_STOP_COPY;
}

/* Any state in which the device must not DMA at all. */
static bool qmig_st_stopped(enum vfio_device_mig_state s)
{
	return !qmig_st_running(s);
}

/* The states dma_after_stop keeps the engines alive in. */
static bool qmig_st_stop_like(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_STOP || s == VFIO_DEVICE_STATE_STOP_COPY;
}

static void qmig_set_mstate(struct qmig_state *q, enum vfio_device_mig_state s)
{
	lockdep_assert_held(&q->lock);
	WRITE_ONCE(q->state, s);
}

static bool qmig_dma_allowed(struct qmig_state *q)
{
	return qmig_st_running(q->state) ||
	       (q->f.dma_after_stop && qmig_st_stop_like(q->state));
}

static bool qmig_p2p_allowed(struct qmig_state *q)
{
	enum vfio_device_mig_state s = q->state;

	if (s == VFIO_DEVICE_STATE_RUNNING || s == VFIO_DEVICE_STATE_PRE_COPY)
		return true;
	if (qmig_st_p2p_quiesced(s))
		return q->f.p2p_in_running_p2p;
	return q->f.dma_after_stop && qmig_st_stop_like(s);
}

static bool qmig_cont_should_run(struct qmig_state *q)
{
	return q->opened && (q->r.cont_ctrl & QMIG_CONT_EN) && qmig_dma_allowed(q);
}

static bool qmig_p2p_should_run(struct qmig_state *q)
{
	return q->opened && (q->r.p2p_ctrl & QMIG_P2P_TX) && qmig_p2p_allowed(q);
}

static bool qmig_rx_should_run(struct qmig_state *q)
{
	return q->opened && (q->r.p2p_ctrl & QMIG_P2P_RX) && qmig_st_running(q->state);
}

static bool qmig_should_run(struct qmig_state *q)
{
	return qmig_cont_should_run(q) || qmig_p2p_should_run(q) ||
	       qmig_rx_should_run(q);
}

static unsigned long qmig_period(struct qmig_state *q)
{
	return max(usecs_to_jiffies(q->r.interval_us), 1UL);
}

/* (Re)arm or disarm the worker after anything it depends on changed. */
static void qmig_kick(struct qmig_state *q)
{
	lockdep_assert_held(&q->lock);
	if (qmig_should_run(q))
		queue_delayed_work(qmig_wq, &q->work, qmig_period(q));
	else
		cancel_delayed_work(&q->work);	/* the worker re-checks under lock */
}

static u32 qmig_clamp_interval(u32 us)
{
	return clamp_t(u32, us, QMIG_INTERVAL_MIN_US, QMIG_INTERVAL_MAX_US);
}

static bool qmig_ring_ok(u64 base, u32 size)
{
	u64 end;

	if (size < QMIG_REC_SIZE || size > QMIG_CONT_MAX_RING ||
	    size % QMIG_REC_SIZE || base % QMIG_REC_SIZE)
		return false;
	return !check_add_overflow(base, (u64)size, &end);
}

static bool qmig_ranges_overlap(u64 a, u64 alen, u64 b, u64 blen)
{
	if (!alen || !blen)
		return false;
	return a <= b + (blen - 1) && b <= a + (alen - 1);
}

/* Mirror the engines' IOVA ranges for the dma_unmap callback. */
static void qmig_update_ranges(struct qmig_state *q)
{
	bool cont = q->r.cont_ctrl & QMIG_CONT_EN;
	bool p2p = q->r.p2p_ctrl & QMIG_P2P_TX;

	lockdep_assert_held(&q->lock);
	spin_lock(&q->range_lock);
	q->cont_rbase = cont ? q->r.cont_base : 0;
	q->cont_rlen = cont ? q->r.cont_size : 0;
	q->p2p_rbase = p2p ? q->r.p2p_target : 0;
	q->p2p_rlen = p2p ? (u64)q->r.p2p_slots * QMIG_REC_SIZE : 0;
	spin_unlock(&q->range_lock);
}

static void qmig_log_arc(struct qmig_state *q, enum vfio_device_mig_state cur,
			 enum vfio_device_mig_state next, bool ok)
{
	struct qmig_arc *a = &q->arcs[q->arc_head];

	a->cur = cur;
	a->next = next;
	a->ok = ok;
	q->arc_head = (q->arc_head + 1) % QMIG_ARC_LOG;
	if (q->arc_count < QMIG_ARC_LOG)
		q->arc_count++;
}

/* ---- config space ---- */

static void qmig_update_bar2_gpa(struct qmig_state *q)
{
	u32 bar = get_unaligned_le32(&q->cfg[PCI_BASE_ADDRESS_2]) &
		  PCI_BASE_ADDRESS_MEM_MASK;

	/* 0 = unprogrammed; the all-ones mask = sizing in progress */
	if (bar == (u32)~(QMIG_BAR2_SIZE - 1))
		bar = 0;
	WRITE_ONCE(q->bar2_gpa, bar);
}

static void qmig_init_config(struct qmig_state *q)
{
	u8 *c = q->cfg;

	memset(c, 0, QMIG_CFG_SIZE);
	put_unaligned_le16(QMIG_PCI_VENDOR, &c[PCI_VENDOR_ID]);
	put_unaligned_le16(QMIG_PCI_DEVICE, &c[PCI_DEVICE_ID]);
	put_unaligned_le16(0, &c[PCI_COMMAND]);
	put_unaligned_le16(0, &c[PCI_STATUS]);		/* no capabilities */
	c[PCI_REVISION_ID] = QMIG_PCI_REVISION;
	c[PCI_CLASS_PROG] = QMIG_PCI_CLASS & 0xff;
	c[PCI_CLASS_DEVICE] = (QMIG_PCI_CLASS >> 8) & 0xff;
	c[PCI_CLASS_DEVICE + 1] = (QMIG_PCI_CLASS >> 16) & 0xff;
	c[PCI_HEADER_TYPE] = PCI_HEADER_TYPE_NORMAL;
	put_unaligned_le32(PCI_BASE_ADDRESS_SPACE_MEMORY |
			   PCI_BASE_ADDRESS_MEM_TYPE_32,
			   &c[PCI_BASE_ADDRESS_0]);
	put_unaligned_le32(PCI_BASE_ADDRESS_SPACE_MEMORY |
			   PCI_BASE_ADDRESS_MEM_TYPE_32 |
			   PCI_BASE_ADDRESS_MEM_PREFETCH,
			   &c[PCI_BASE_ADDRESS_2]);
	put_unaligned_le16(QMIG_PCI_VENDOR, &c[PCI_SUBSYSTEM_VENDOR_ID]);
	put_unaligned_le16(QMIG_PCI_DEVICE, &c[PCI_SUBSYSTEM_ID]);
	c[PCI_INTERRUPT_PIN] = 0;			/* no INTx */
	qmig_update_bar2_gpa(q);
}

static void qmig_cfg_write(struct qmig_state *q, u32 off, const u8 *val, u32 n)
{
	u32 i;

	for (i = 0; i < n && off + i < QMIG_CFG_SIZE; i++) {
		u8 m = qmig_cfg_wmask[off + i];

		q->cfg[off + i] = (q->cfg[off + i] & ~m) | (val[i] & m);
	}
	qmig_update_bar2_gpa(q);
}

/* ---- register file ---- */

static void qmig_regs_reset(struct qmig_state *q)
{
	lockdep_assert_held(&q->lock);
	memset(&q->r, 0, sizeof(q->r));
	q->r.tag = q->default_tag;
	q->r.interval_us = qmig_clamp_interval(READ_ONCE(default_interval_us));
	q->r.cont_seq = 1;
	q->r.p2p_seq = 1;
	q->r.p2p_slots = QMIG_RX_SLOTS;
	atomic_set(&q->unmap_pending, 0);
	qmig_update_ranges(q);
}

static void qmig_mem_clear(struct qmig_state *q)
{
	spin_lock(&q->mem_lock);
	memset(q->mem, 0, QMIG_BAR2_SIZE);
	spin_unlock(&q->mem_lock);
}

/* Device reset: engines off, registers to defaults, BAR2 zeroed. */
static void qmig_device_reset(struct qmig_state *q)
{
	qmig_regs_reset(q);
	qmig_mem_clear(q);
}

/* Guest CTRL.ENGINE_RESET: like a device reset, but keeps BAR2 and setup. */
static void qmig_engine_reset(struct qmig_state *q)
{
	u32 scratch = q->r.scratch, tag = q->r.tag, iv = q->r.interval_us;

	qmig_regs_reset(q);
	q->r.scratch = scratch;
	q->r.tag = tag;
	q->r.interval_us = iv;
}

static u32 qmig_status(struct qmig_state *q)
{
	u32 st = q->r.status & QMIG_ST_STICKY;

	if (q->r.cont_ctrl & QMIG_CONT_EN)
		st |= QMIG_ST_CONT_ON;
	if (q->r.p2p_ctrl & QMIG_P2P_TX)
		st |= QMIG_ST_P2P_TX_ON;
	if (q->r.p2p_ctrl & QMIG_P2P_RX)
		st |= QMIG_ST_P2P_RX_ON;
	if (qmig_dma_allowed(q))
		st |= QMIG_ST_DMA_ALLOWED;
	if (qmig_p2p_allowed(q))
		st |= QMIG_ST_P2P_ALLOWED;
	st |= (u32)q->state << QMIG_ST_STATE_SHIFT;
	return st;
}

#define QMIG_R64(reg, v)					\
	case reg:						\
		return lower_32_bits(v);			\
	case (reg) + 4:						\
		return upper_32_bits(v)

static u32 qmig_reg_read(struct qmig_state *q, u32 off)
{
	struct qmig_regs *r = &q->r;

	switch (off) {
	case QMIG_REG_ID:
		return QMIG_ID_MAGIC;
	case QMIG_REG_VERSION:
		return QMIG_HW_VERSION;
	case QMIG_REG_STATUS:
		return qmig_status(q);
	case QMIG_REG_SCRATCH:
		return r->scratch;
	case QMIG_REG_TAG:
		return r->tag;
	case QMIG_REG_INTERVAL_US:
		return r->interval_us;
	case QMIG_REG_MIG_STATE:
		return q->state;
	QMIG_R64(QMIG_REG_DMA_SRC, r->dma_src);
	QMIG_R64(QMIG_REG_DMA_DST, r->dma_dst);
	case QMIG_REG_DMA_LEN:
		return r->dma_len;
	case QMIG_REG_DMA_CMD:
		return r->dma_cmd;
	case QMIG_REG_DMA_COUNT:
		return r->dma_count;
	case QMIG_REG_DMA_RESULT:
		return r->dma_result;
	QMIG_R64(QMIG_REG_CONT_BASE, r->cont_base);
	case QMIG_REG_CONT_SIZE:
		return r->cont_size;
	case QMIG_REG_CONT_CTRL:
		return r->cont_ctrl;
	QMIG_R64(QMIG_REG_CONT_SEQ, r->cont_seq);
	case QMIG_REG_CONT_HEAD:
		return r->cont_head;
	case QMIG_REG_CONT_ERRORS:
		return r->cont_errors;
	QMIG_R64(QMIG_REG_P2P_TARGET, r->p2p_target);
	case QMIG_REG_P2P_SLOTS:
		return r->p2p_slots;
	case QMIG_REG_P2P_CTRL:
		return r->p2p_ctrl;
	QMIG_R64(QMIG_REG_P2P_SEQ, r->p2p_seq);
	case QMIG_REG_P2P_SENT:
		return r->p2p_sent;
	case QMIG_REG_P2P_ERRORS:
		return r->p2p_errors;
	QMIG_R64(QMIG_REG_RECORDS, r->records);
	case QMIG_REG_P2P_RECEIVED:
		return r->p2p_received;
	case QMIG_REG_P2P_LAST_PATH:
		return r->p2p_last_path;
	QMIG_R64(QMIG_REG_P2P_RX_LAST, r->p2p_rx_last);
	default:
		return 0;
	}
}

static void qmig_set_lo(u64 *v, u32 val)
{
	*v = (*v & GENMASK_ULL(63, 32)) | val;
}

static void qmig_set_hi(u64 *v, u32 val)
{
	*v = (*v & GENMASK_ULL(31, 0)) | ((u64)val << 32);
}

/* ---- peers (P2P) ---- */

/*
 * Find another instance opened by the same process (the same QEMU, hence
 * the same guest-physical/IOVA space) whose BAR2, as programmed in its
 * config space, contains [iova, iova + len).  vdev->kvm is not used: it
 * is NULL for every TCG guest, and the lab runs the migration source and
 * destination side by side.  Caller holds qmig_list_lock; the result is
 * valid until it is dropped (remove() unlinks before freeing).
 */
static struct qmig_state *qmig_find_peer(struct qmig_state *q, u64 iova,
					 u32 len, u32 *off)
{
	struct qmig_state *p;

	lockdep_assert_held(&qmig_list_lock);
	list_for_each_entry(p, &qmig_list, node) {
		u64 base;

		if (p == q || !READ_ONCE(p->opened) || !q->owner_mm ||
		    READ_ONCE(p->owner_mm) != q->owner_mm)
			continue;
		base = READ_ONCE(p->bar2_gpa);
		if (!base || iova < base || len > QMIG_BAR2_SIZE ||
		    iova - base > QMIG_BAR2_SIZE - len)
			continue;
		*off = iova - base;
		return p;
	}
	return NULL;
}

static bool qmig_iova_is_peer(struct qmig_state *q, u64 iova, u32 len)
{
	bool found;
	u32 off;

	mutex_lock(&qmig_list_lock);
	found = qmig_find_peer(q, iova, len, &off);
	mutex_unlock(&qmig_list_lock);
	return found;
}

/* A P2P write landed at iova: if it is a stopped peer's BAR2, count it there. */
static void qmig_note_peer_rx(struct qmig_state *q, u64 iova, u32 len)
{
	struct qmig_state *p;
	u32 off;

	mutex_lock(&qmig_list_lock);
	p = qmig_find_peer(q, iova, len, &off);
	if (p && qmig_st_stopped(READ_ONCE(p->state)))
		atomic64_inc(&p->stats.rx_while_stopped);
	mutex_unlock(&qmig_list_lock);
}

static int qmig_p2p_direct(struct qmig_state *q, u64 iova, const void *data,
			   u32 len)
{
	struct qmig_state *p;
	int ret = -ENODEV;
	u32 off;

	mutex_lock(&qmig_list_lock);
	p = qmig_find_peer(q, iova, len, &off);
	if (p) {
		spin_lock(&p->mem_lock);
		memcpy(p->mem + off, data, len);
		spin_unlock(&p->mem_lock);
		ret = 0;
	}
	mutex_unlock(&qmig_list_lock);
	return ret;
}

/* ---- engines ---- */

/* Book-keeping for any outgoing transfer the device just made. */
static void qmig_note_out(struct qmig_state *q, bool p2p)
{
	if (qmig_st_stopped(q->state))
		atomic64_inc(&q->stats.writes_while_stopped);
	else if (p2p && qmig_st_p2p_quiesced(q->state))
		atomic64_inc(&q->stats.p2p_while_quiesced);
}

static void qmig_build_record(struct qmig_state *q, struct qmig_record *rec,
			      u16 kind, u64 seq, u32 slot)
{
	unsigned int i;

	rec->magic = cpu_to_le32(QMIG_REC_MAGIC);
	rec->kind = cpu_to_le16(kind);
	rec->src = cpu_to_le16(q->r.tag);
	rec->seq = cpu_to_le64(seq);
	rec->time_ns = cpu_to_le64(ktime_get_real_ns());
	rec->mig_state = cpu_to_le32(q->state);
	rec->slot = cpu_to_le32(slot);
	for (i = 0; i < sizeof(rec->fill); i++)
		rec->fill[i] = (u8)(seq + i);
	rec->crc = cpu_to_le32(~crc32_le(~0U, (const u8 *)rec,
					 offsetof(struct qmig_record, crc)));
}

static bool qmig_record_valid(const struct qmig_record *rec)
{
	return le32_to_cpu(rec->magic) == QMIG_REC_MAGIC &&
	       le32_to_cpu(rec->crc) ==
	       ~crc32_le(~0U, (const u8 *)rec, offsetof(struct qmig_record, crc));
}

/* Stop engines whose IOVA range userspace unmapped. */
static void qmig_consume_unmap(struct qmig_state *q)
{
	int bits = atomic_xchg(&q->unmap_pending, 0);

	if (!bits)
		return;
	if ((bits & QMIG_UNMAP_CONT) && (q->r.cont_ctrl & QMIG_CONT_EN)) {
		q->r.cont_ctrl &= ~QMIG_CONT_EN;
		q->r.status |= QMIG_ST_UNMAPPED | QMIG_ST_CONT_ERR;
	}
	if ((bits & QMIG_UNMAP_P2P) && (q->r.p2p_ctrl & QMIG_P2P_TX)) {
		q->r.p2p_ctrl &= ~QMIG_P2P_TX;
		q->r.status |= QMIG_ST_UNMAPPED | QMIG_ST_P2P_ERR;
	}
	qmig_update_ranges(q);
}

static void qmig_dma_oneshot(struct qmig_state *q, u32 cmd)
{
	struct qmig_regs *r = &q->r;
	u32 len = r->dma_len;
	bool p2p = false;
	u64 iova, boff;
	int ret;

	r->status &= ~(QMIG_ST_DMA_DONE | QMIG_ST_DMA_ERR);
	if (cmd != QMIG_DMA_CMD_TO_DEV && cmd != QMIG_DMA_CMD_FROM_DEV) {
		ret = -EINVAL;
		goto done;
	}
	iova = cmd == QMIG_DMA_CMD_TO_DEV ? r->dma_src : r->dma_dst;
	boff = cmd == QMIG_DMA_CMD_TO_DEV ? r->dma_dst : r->dma_src;
	if (!len || len > QMIG_BAR2_SIZE || boff > QMIG_BAR2_SIZE - len) {
		ret = -EINVAL;
		goto done;
	}
	if (!q->opened || !qmig_dma_allowed(q)) {
		ret = -EBUSY;
		goto done;
	}
	if (qmig_iova_is_peer(q, iova, len)) {
		p2p = true;
		if (!qmig_p2p_allowed(q)) {
			ret = -EBUSY;
			goto done;
		}
	}
	if (cmd == QMIG_DMA_CMD_TO_DEV) {
		ret = vfio_dma_rw(&q->vdev, iova, q->bounce, len, false);
		if (!ret) {
			spin_lock(&q->mem_lock);
			memcpy(q->mem + boff, q->bounce, len);
			spin_unlock(&q->mem_lock);
		}
	} else {
		spin_lock(&q->mem_lock);
		memcpy(q->bounce, q->mem + boff, len);
		spin_unlock(&q->mem_lock);
		ret = vfio_dma_rw(&q->vdev, iova, q->bounce, len, true);
		if (!ret && p2p)
			qmig_note_peer_rx(q, iova, len);
	}
	if (!ret)
		qmig_note_out(q, p2p);
done:
	r->dma_result = -ret;
	if (ret) {
		r->status |= QMIG_ST_DMA_ERR;
		atomic64_inc(&q->stats.dma_errors);
	} else {
		r->status |= QMIG_ST_DMA_DONE;
		r->dma_count++;
		atomic64_inc(&q->stats.dma_ops);
	}
}

static void qmig_cont_tick(struct qmig_state *q)
{
	struct qmig_regs *r = &q->r;
	u32 nslots = r->cont_size / QMIG_REC_SIZE;
	struct qmig_record rec;
	u64 iova;
	int ret;

	if (r->cont_head >= nslots)
		r->cont_head = 0;
	iova = r->cont_base + (u64)r->cont_head * QMIG_REC_SIZE;
	qmig_build_record(q, &rec, QMIG_REC_KIND_CONT, r->cont_seq, r->cont_head);
	ret = vfio_dma_rw(&q->vdev, iova, &rec, sizeof(rec), true);
	if (ret) {
		r->cont_errors++;
		r->status |= QMIG_ST_CONT_ERR;
		r->cont_ctrl &= ~QMIG_CONT_EN;
		qmig_update_ranges(q);
		atomic64_inc(&q->stats.dma_errors);
		return;
	}
	r->cont_seq++;
	r->records++;
	r->cont_head = (r->cont_head + 1) % nslots;
	atomic64_inc(&q->stats.dma_records);
	qmig_note_out(q, false);
}

static void qmig_p2p_tick(struct qmig_state *q)
{
	struct qmig_regs *r = &q->r;
	u32 mode = (r->p2p_ctrl & QMIG_P2P_MODE_MASK) >> QMIG_P2P_MODE_SHIFT;
	struct qmig_record rec;
	int ret = -ENODEV;
	u32 path = 0;
	u32 slot;
	u64 iova;

	div_u64_rem(r->p2p_seq - 1, r->p2p_slots, &slot);
	iova = r->p2p_target + (u64)slot * QMIG_REC_SIZE;
	qmig_build_record(q, &rec, QMIG_REC_KIND_P2P, r->p2p_seq, slot);
	if (mode == QMIG_P2P_MODE_AUTO || mode == QMIG_P2P_MODE_DMA_RW) {
		ret = vfio_dma_rw(&q->vdev, iova, &rec, sizeof(rec), true);
		if (!ret)
			path = QMIG_PATH_DMA_RW;
	}
	if (ret && mode != QMIG_P2P_MODE_DMA_RW) {
		ret = qmig_p2p_direct(q, iova, &rec, sizeof(rec));
		if (!ret)
			path = QMIG_PATH_DIRECT;
	}
	if (ret) {
		r->p2p_errors++;
		r->status |= QMIG_ST_P2P_ERR;
		r->p2p_ctrl &= ~QMIG_P2P_TX;
		qmig_update_ranges(q);
		atomic64_inc(&q->stats.dma_errors);
		return;
	}
	r->p2p_seq++;
	r->p2p_sent++;
	r->p2p_last_path = path;
	atomic64_inc(&q->stats.p2p_sent);
	if (path == QMIG_PATH_DIRECT)
		atomic64_inc(&q->stats.p2p_direct);
	qmig_note_out(q, true);
	qmig_note_peer_rx(q, iova, sizeof(rec));
}

/* Count new valid P2P records in this instance's receive window. */
static void qmig_rx_scan(struct qmig_state *q)
{
	struct qmig_regs *r = &q->r;
	struct qmig_record rec;
	unsigned int i, n = 0;

	spin_lock(&q->mem_lock);
	for (i = 0; i < QMIG_RX_SLOTS; i++) {
		u64 seq;

		memcpy(&rec, q->mem + QMIG_RX_OFF + i * QMIG_REC_SIZE, sizeof(rec));
		if (!qmig_record_valid(&rec) ||
		    le16_to_cpu(rec.kind) != QMIG_REC_KIND_P2P)
			continue;
		seq = le64_to_cpu(rec.seq);
		if (seq == r->rx_slot_seq[i])
			continue;
		r->rx_slot_seq[i] = seq;
		r->p2p_received++;
		r->p2p_rx_last = max(r->p2p_rx_last, seq);
		n++;
	}
	spin_unlock(&q->mem_lock);
	if (n)
		atomic64_add(n, &q->stats.p2p_received);
}

static void qmig_work_fn(struct work_struct *work)
{
	struct qmig_state *q = container_of(to_delayed_work(work),
					    struct qmig_state, work);

	mutex_lock(&q->lock);
	if (!q->opened)
		goto out;
	qmig_consume_unmap(q);
	if (qmig_cont_should_run(q))
		qmig_cont_tick(q);
	if (qmig_p2p_should_run(q))
		qmig_p2p_tick(q);
	if (qmig_rx_should_run(q))
		qmig_rx_scan(q);
	if (qmig_should_run(q))
		queue_delayed_work(qmig_wq, &q->work, qmig_period(q));
out:
	mutex_unlock(&q->lock);
}

static void qmig_reg_write(struct qmig_state *q, u32 off, u32 val)
{
	struct qmig_regs *r = &q->r;
	bool cont_on = r->cont_ctrl & QMIG_CONT_EN;
	bool tx_on = r->p2p_ctrl & QMIG_P2P_TX;

	switch (off) {
	case QMIG_REG_CTRL:
		if (val & QMIG_CTRL_ENGINE_RESET)
			qmig_engine_reset(q);
		if (val & QMIG_CTRL_CLEAR_STATUS)
			r->status &= ~QMIG_ST_STICKY;
		break;
	case QMIG_REG_SCRATCH:
		r->scratch = val;
		break;
	case QMIG_REG_TAG:
		r->tag = val & 0xffff;
		break;
	case QMIG_REG_INTERVAL_US:
		r->interval_us = qmig_clamp_interval(val);
		break;
	case QMIG_REG_DMA_SRC:
		qmig_set_lo(&r->dma_src, val);
		break;
	case QMIG_REG_DMA_SRC + 4:
		qmig_set_hi(&r->dma_src, val);
		break;
	case QMIG_REG_DMA_DST:
		qmig_set_lo(&r->dma_dst, val);
		break;
	case QMIG_REG_DMA_DST + 4:
		qmig_set_hi(&r->dma_dst, val);
		break;
	case QMIG_REG_DMA_LEN:
		r->dma_len = val;
		break;
	case QMIG_REG_DMA_CMD:
		r->dma_cmd = val;
		qmig_dma_oneshot(q, val);
		break;
	case QMIG_REG_CONT_BASE:
		if (!cont_on)
			qmig_set_lo(&r->cont_base, val);
		break;
	case QMIG_REG_CONT_BASE + 4:
		if (!cont_on)
			qmig_set_hi(&r->cont_base, val);
		break;
	case QMIG_REG_CONT_SIZE:
		if (!cont_on)
			r->cont_size = val;
		break;
	case QMIG_REG_CONT_CTRL:
		if ((val & QMIG_CONT_EN) && !cont_on) {
			if (!qmig_ring_ok(r->cont_base, r->cont_size)) {
				r->status |= QMIG_ST_CONT_ERR;
				break;
			}
			r->cont_head = 0;
			r->status &= ~QMIG_ST_CONT_ERR;
			atomic_andnot(QMIG_UNMAP_CONT, &q->unmap_pending);
		}
		r->cont_ctrl = val & QMIG_CONT_EN;
		qmig_update_ranges(q);
		break;
	case QMIG_REG_P2P_TARGET:
		if (!tx_on)
			qmig_set_lo(&r->p2p_target, val);
		break;
	case QMIG_REG_P2P_TARGET + 4:
		if (!tx_on)
			qmig_set_hi(&r->p2p_target, val);
		break;
	case QMIG_REG_P2P_SLOTS:
		if (!tx_on)
			r->p2p_slots = val;
		break;
	case QMIG_REG_P2P_CTRL:
		val &= QMIG_P2P_CTRL_MASK;
		if ((val & QMIG_P2P_MODE_MASK) >> QMIG_P2P_MODE_SHIFT > QMIG_P2P_MODE_DIRECT) {
			r->status |= QMIG_ST_P2P_ERR;
			break;
		}
		if ((val & QMIG_P2P_TX) && !tx_on) {
			if (!r->p2p_slots || r->p2p_slots > QMIG_RX_SLOTS ||
			    r->p2p_target % QMIG_REC_SIZE) {
				r->status |= QMIG_ST_P2P_ERR;
				val &= ~QMIG_P2P_TX;
			} else {
				r->status &= ~QMIG_ST_P2P_ERR;
				atomic_andnot(QMIG_UNMAP_P2P, &q->unmap_pending);
			}
		}
		r->p2p_ctrl = val;
		qmig_update_ranges(q);
		break;
	default:
		break;		/* read-only or unassigned: ignored */
	}
}

/* ---- region access ---- */

static ssize_t qmig_bar0_rw(struct qmig_state *q, u32 off, u8 *val, size_t n,
			    bool write)
{
	u32 v;
	size_t i;

	if ((n != 1 && n != 2 && n != 4 && n != 8) || (off & (n - 1)) ||
	    off + n > QMIG_BAR0_SIZE)
		return -EINVAL;

	lockdep_assert_held(&q->lock);
	if (!write) {
		if (n == 8) {
			put_unaligned_le32(qmig_reg_read(q, off), val);
			put_unaligned_le32(qmig_reg_read(q, off + 4), val + 4);
		} else {
			v = qmig_reg_read(q, off & ~3U) >> ((off & 3) * 8);
			for (i = 0; i < n; i++)
				val[i] = v >> (8 * i);
		}
		return n;
	}

	/* sub-dword writes are ignored */
	if (n == 8) {
		qmig_reg_write(q, off, get_unaligned_le32(val));
		qmig_reg_write(q, off + 4, get_unaligned_le32(val + 4));
	} else if (n == 4) {
		qmig_reg_write(q, off, get_unaligned_le32(val));
	}
	qmig_kick(q);
	return n;
}

static ssize_t qmig_rw(struct vfio_device *vdev, char __user *ubuf,
		       size_t count, loff_t *ppos, bool write)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	u64 pos = *ppos;
	unsigned int index = pos >> QMIG_OFF_SHIFT;
	u64 off = pos & QMIG_OFF_MASK;
	u8 tmp[8];
	ssize_t ret;

	if (!count)
		return 0;

	switch (index) {
	case VFIO_PCI_CONFIG_REGION_INDEX:
		if (off >= QMIG_CFG_SIZE)
			return -EINVAL;
		count = min_t(size_t, count, QMIG_CFG_SIZE - off);
		mutex_lock(&q->lock);
		if (write) {
			u8 buf[QMIG_CFG_SIZE];

			if (copy_from_user(buf, ubuf, count)) {
				ret = -EFAULT;
			} else {
				qmig_cfg_write(q, off, buf, count);
				ret = count;
			}
		} else if (copy_to_user(ubuf, q->cfg + off, count)) {
			ret = -EFAULT;
		} else {
			ret = count;
		}
		mutex_unlock(&q->lock);
		break;

	case VFIO_PCI_BAR0_REGION_INDEX:
		if (count > sizeof(tmp) || off >= QMIG_BAR0_SIZE)
			return -EINVAL;
		if (write && copy_from_user(tmp, ubuf, count))
			return -EFAULT;
		mutex_lock(&q->lock);
		ret = qmig_bar0_rw(q, off, tmp, count, write);
		mutex_unlock(&q->lock);
		if (ret > 0 && !write && copy_to_user(ubuf, tmp, count))
			ret = -EFAULT;
		break;

	case VFIO_PCI_BAR2_REGION_INDEX:
		/* plain memory; racy against mmap users by nature */
		if (off >= QMIG_BAR2_SIZE)
			return -EINVAL;
		count = min_t(size_t, count, QMIG_BAR2_SIZE - off);
		if (write ? copy_from_user(q->mem + off, ubuf, count) :
			    copy_to_user(ubuf, q->mem + off, count))
			ret = -EFAULT;
		else
			ret = count;
		break;

	default:
		return -EINVAL;
	}

	if (ret > 0)
		*ppos += ret;
	return ret;
}

static ssize_t qmig_read(struct vfio_device *vdev, char __user *buf,
			 size_t count, loff_t *ppos)
{
	return qmig_rw(vdev, buf, count, ppos, false);
}

static ssize_t qmig_write(struct vfio_device *vdev, const char __user *buf,
			  size_t count, loff_t *ppos)
{
	return qmig_rw(vdev, (char __user *)buf, count, ppos, true);
}

static int qmig_mmap(struct vfio_device *vdev, struct vm_area_struct *vma)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	unsigned long index = vma->vm_pgoff >> (QMIG_OFF_SHIFT - PAGE_SHIFT);
	unsigned long pgoff = vma->vm_pgoff &
			      ((1UL << (QMIG_OFF_SHIFT - PAGE_SHIFT)) - 1);
	unsigned long size = vma->vm_end - vma->vm_start;

	/* no q->lock here: mmap runs under mmap_lock, see the lock order */
	if (index != VFIO_PCI_BAR2_REGION_INDEX)
		return -EINVAL;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (pgoff >= QMIG_BAR2_SIZE >> PAGE_SHIFT ||
	    size > QMIG_BAR2_SIZE - (pgoff << PAGE_SHIFT))
		return -EINVAL;
	return remap_vmalloc_range(vma, q->mem, pgoff);
}

/* ---- migration files ---- */

static void qmig_migf_free(struct qmig_migf *m)
{
	kvfree(m->buf);
	kvfree(m->shadow);
	kvfree(m->payload);
	kvfree(m->stage_bar2);
	mutex_destroy(&m->lock);
	kfree(m);
}

static int qmig_migf_release(struct inode *inode, struct file *filp)
{
	struct qmig_migf *m = filp->private_data;
	struct qmig_state *q = m->q;

	qmig_migf_free(m);
	vfio_put_device(&q->vdev);	/* may be the last reference */
	return 0;
}

static struct qmig_migf *qmig_migf_new(struct qmig_state *q, bool saving,
				       bool has_bar2)
{
	struct qmig_migf *m;
	struct file *filp;

	m = kzalloc(sizeof(*m), GFP_KERNEL_ACCOUNT);
	if (!m)
		return ERR_PTR(-ENOMEM);
	mutex_init(&m->lock);
	m->q = q;
	m->crc = ~0U;
	if (saving) {
		m->has_bar2 = has_bar2;
		m->cap = 2 * QMIG_FULL_STREAM;
		m->buf = kvzalloc(m->cap, GFP_KERNEL_ACCOUNT);
		if (m->buf && has_bar2)
			m->shadow = kvzalloc(QMIG_BAR2_SIZE, GFP_KERNEL_ACCOUNT);
		if (!m->buf || (has_bar2 && !m->shadow))
			goto nomem;
	} else {
		m->payload = kvzalloc(QMIG_MAX_PAY, GFP_KERNEL_ACCOUNT);
		m->stage_bar2 = kvzalloc(QMIG_BAR2_SIZE, GFP_KERNEL_ACCOUNT);
		if (!m->payload || !m->stage_bar2)
			goto nomem;
	}

	/* the file keeps q alive: released in qmig_migf_release() */
	get_device(&q->vdev.device);
	filp = anon_inode_getfile("qmigdev_mig",
				  saving ? &qmig_save_fops : &qmig_resume_fops,
				  m, saving ? O_RDONLY : O_WRONLY);
	if (IS_ERR(filp)) {
		vfio_put_device(&q->vdev);
		qmig_migf_free(m);
		return ERR_CAST(filp);
	}
	stream_open(filp->f_inode, filp);
	m->filp = filp;
	return m;

nomem:
	qmig_migf_free(m);
	return ERR_PTR(-ENOMEM);
}

static void qmig_migf_disable(struct qmig_migf *m)
{
	mutex_lock(&m->lock);
	m->disabled = true;
	m->len = 0;
	m->off = 0;
	mutex_unlock(&m->lock);
}

static void qmig_drop_files(struct qmig_state *q)
{
	lockdep_assert_held(&q->lock);
	if (q->saving_migf) {
		qmig_migf_disable(q->saving_migf);
		fput(q->saving_migf->filp);
		q->saving_migf = NULL;
	}
	if (q->resuming_migf) {
		qmig_migf_disable(q->resuming_migf);
		fput(q->resuming_migf->filp);
		q->resuming_migf = NULL;
	}
}

/* ---- saving ---- */

static int qmig_put_sec(struct qmig_migf *m, u16 type, const void *a, u32 alen,
			const void *b, u32 blen)
{
	u32 len = alen + blen;
	size_t total = sizeof(struct qmig_sec) + len;
	struct qmig_sec s;
	u32 crc;
	u8 *dst;

	lockdep_assert_held(&m->lock);
	if (m->off) {		/* compact: move pending bytes to the front */
		memmove(m->buf, m->buf + m->off, m->len - m->off);
		m->len -= m->off;
		m->off = 0;
	}
	if (WARN_ON_ONCE(m->len + total > m->cap))
		return -ENOSPC;

	crc = crc32_le(~0U, a, alen);
	if (blen)
		crc = crc32_le(crc, b, blen);
	s.magic = cpu_to_le32(QMIG_SEC_MAGIC);
	s.type = cpu_to_le16(type);
	s.flags = 0;
	s.len = cpu_to_le32(len);
	s.crc = cpu_to_le32(~crc);

	dst = m->buf + m->len;
	memcpy(dst, &s, sizeof(s));
	memcpy(dst + sizeof(s), a, alen);
	if (blen)
		memcpy(dst + sizeof(s) + alen, b, blen);
	if (type != QMIG_SEC_END) {
		m->crc = crc32_le(m->crc, dst, total);
		m->nsec++;
	}
	m->len += total;
	m->produced += total;
	return 0;
}

static int qmig_put_chunk(struct qmig_migf *m, unsigned int i, const u8 *data)
{
	struct qmig_chunk_hdr ch = {
		.offset = cpu_to_le32(i * QMIG_CHUNK),
	};

	return qmig_put_sec(m, QMIG_SEC_BAR2, &ch, sizeof(ch), data, QMIG_CHUNK);
}

static void qmig_snapshot_bar2(struct qmig_state *q, u8 *dst)
{
	spin_lock(&q->mem_lock);
	memcpy(dst, q->mem, QMIG_BAR2_SIZE);
	spin_unlock(&q->mem_lock);
}

static unsigned int qmig_count_dirty(struct qmig_state *q, struct qmig_migf *m)
{
	unsigned int i, n = 0;

	if (!m->has_bar2)
		return 0;
	spin_lock(&q->mem_lock);
	for (i = 0; i < QMIG_NCHUNKS; i++)
		if (memcmp(q->mem + i * QMIG_CHUNK, m->shadow + i * QMIG_CHUNK,
			   QMIG_CHUNK))
			n++;
	spin_unlock(&q->mem_lock);
	return n;
}

/* Header and the whole of BAR2: the initial data of a session. */
static int qmig_save_begin(struct qmig_state *q, struct qmig_migf *m, bool precopy)
{
	struct qmig_stream_hdr h = {
		.version = cpu_to_le32(QMIG_STREAM_VERSION),
		.flags = cpu_to_le32((m->has_bar2 ? QMIG_HDR_HAS_BAR2 : 0) |
				     (precopy ? QMIG_HDR_PRECOPY : 0)),
		.type = cpu_to_le32(q->type->code),
		.cfg_size = cpu_to_le32(QMIG_CFG_SIZE),
		.bar0_size = cpu_to_le32(QMIG_BAR0_SIZE),
		.bar2_size = cpu_to_le32(QMIG_BAR2_SIZE),
		.chunk_size = cpu_to_le32(QMIG_CHUNK),
		.dev_size = cpu_to_le32(QMIG_DEV_PAY),
	};
	unsigned int i;
	int ret;

	mutex_lock(&m->lock);
	ret = qmig_put_sec(m, QMIG_SEC_HEADER, &h, sizeof(h), NULL, 0);
	if (!ret && m->has_bar2) {
		qmig_snapshot_bar2(q, m->shadow);
		for (i = 0; i < QMIG_NCHUNKS && !ret; i++)
			ret = qmig_put_chunk(m, i, m->shadow + i * QMIG_CHUNK);
	}
	m->initial_end = m->produced;
	mutex_unlock(&m->lock);
	return ret;
}

/* Chunks of BAR2 that changed since they were last streamed. */
static int qmig_save_delta(struct qmig_state *q, struct qmig_migf *m)
{
	unsigned int i;
	int ret = 0;

	lockdep_assert_held(&q->lock);
	lockdep_assert_held(&m->lock);
	if (!m->has_bar2)
		return 0;
	qmig_snapshot_bar2(q, q->bounce);
	for (i = 0; i < QMIG_NCHUNKS && !ret; i++) {
		u8 *cur = q->bounce + i * QMIG_CHUNK;
		u8 *old = m->shadow + i * QMIG_CHUNK;

		if (!memcmp(cur, old, QMIG_CHUNK))
			continue;
		ret = qmig_put_chunk(m, i, cur);
		if (!ret)
			memcpy(old, cur, QMIG_CHUNK);
	}
	return ret;
}

static void qmig_regs_to_image(struct qmig_state *q, struct qmig_dev_image *img)
{
	const struct qmig_regs *r = &q->r;
	unsigned int i;

	memcpy(img->config, q->cfg, QMIG_CFG_SIZE);
#define X(n) img->n = cpu_to_le64(r->n);
	QMIG_REGS64(X)
#undef X
#define X(n) img->n = cpu_to_le32(r->n);
	QMIG_REGS32(X)
#undef X
	for (i = 0; i < QMIG_RX_SLOTS; i++)
		img->rx_slot_seq[i] = cpu_to_le64(r->rx_slot_seq[i]);
}

/* STOP_COPY: remaining BAR2 changes, device state, END. */
static int qmig_save_final(struct qmig_state *q, struct qmig_migf *m)
{
	struct qmig_stream_end e;
	struct qmig_dev_image *img;
	size_t dev_pos;
	int ret;

	lockdep_assert_held(&q->lock);
	if (q->f.delay_save_ms)
		msleep(q->f.delay_save_ms);

	img = kzalloc(sizeof(*img), GFP_KERNEL);
	if (!img)
		return -ENOMEM;
	qmig_regs_to_image(q, img);

	mutex_lock(&m->lock);
	ret = qmig_save_delta(q, m);
	if (ret)
		goto out;
	ret = qmig_put_sec(m, QMIG_SEC_DEVICE, img, sizeof(*img), NULL, 0);
	if (ret)
		goto out;
	dev_pos = m->len - QMIG_SEC_SIZE(QMIG_DEV_PAY);
	if (q->f.corrupt_stream)	/* after the CRCs were computed */
		m->buf[dev_pos + sizeof(struct qmig_sec) + QMIG_CFG_SIZE] ^= 0x5a;

	e.total_len = cpu_to_le64(m->produced + QMIG_SEC_SIZE(QMIG_END_PAY));
	e.nsec = cpu_to_le32(m->nsec);
	e.stream_crc = cpu_to_le32(~m->crc);
	ret = qmig_put_sec(m, QMIG_SEC_END, &e, sizeof(e), NULL, 0);
	if (ret)
		goto out;
	if (q->f.truncate_stream)	/* lose END and half of DEVICE */
		m->len = dev_pos + QMIG_SEC_SIZE(QMIG_DEV_PAY) / 2;
	m->final = true;
	atomic64_inc(&q->stats.saves);
out:
	mutex_unlock(&m->lock);
	kfree(img);
	return ret;
}

static ssize_t qmig_save_read(struct file *filp, char __user *ubuf, size_t len,
			      loff_t *pos)
{
	struct qmig_migf *m = filp->private_data;
	struct qmig_state *q = m->q;
	ssize_t ret;
	size_t n;

	if (pos)
		return -ESPIPE;

	mutex_lock(&q->lock);
	mutex_lock(&m->lock);
	if (m->disabled) {
		ret = -ENODEV;
		goto out;
	}
	if (m->off == m->len) {
		m->off = 0;
		m->len = 0;
		if (m->final || !qmig_st_precopy(q->state)) {
			ret = 0;			/* end of stream */
			goto out;
		}
		ret = qmig_save_delta(q, m);
		if (ret)
			goto out;
		if (m->off == m->len) {
			ret = -ENOMSG;			/* temporary end of stream */
			goto out;
		}
	}
	n = min(len, m->len - m->off);
	if (copy_to_user(ubuf, m->buf + m->off, n)) {
		ret = -EFAULT;
		goto out;
	}
	m->off += n;
	m->consumed += n;
	ret = n;
out:
	mutex_unlock(&m->lock);
	mutex_unlock(&q->lock);
	return ret;
}

static long qmig_precopy_ioctl(struct file *filp, unsigned int cmd,
			       unsigned long arg)
{
	struct qmig_migf *m = filp->private_data;
	struct qmig_state *q = m->q;
	unsigned long minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	struct vfio_precopy_info info;
	u64 pending, initial;
	int ret = 0;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&q->lock);
	if (!qmig_st_precopy(q->state)) {
		ret = -EINVAL;
		goto unlock;
	}
	mutex_lock(&m->lock);
	if (m->disabled) {
		mutex_unlock(&m->lock);
		ret = -ENODEV;
		goto unlock;
	}
	pending = m->len - m->off;
	initial = m->consumed < m->initial_end ? m->initial_end - m->consumed : 0;
	initial = min(initial, pending);
	info.flags = 0;
	info.initial_bytes = initial;
	info.dirty_bytes = (pending - initial) +
			   (u64)qmig_count_dirty(q, m) * QMIG_SEC_SIZE(QMIG_CHUNK_PAY);
	switch (q->f.lie_precopy_info) {
	case QMIG_LIE_PRECOPY_ZERO:
		info.initial_bytes = 0;
		info.dirty_bytes = 0;
		break;
	case QMIG_LIE_PRECOPY_STUCK:
		info.initial_bytes = max_t(u64, m->initial_end, 1);
		break;
	}
	mutex_unlock(&m->lock);
unlock:
	mutex_unlock(&q->lock);
	if (!ret && copy_to_user((void __user *)arg, &info, minsz))
		ret = -EFAULT;
	return ret;
}

static const struct file_operations qmig_save_fops = {
	.owner = THIS_MODULE,
	.read = qmig_save_read,
	.unlocked_ioctl = qmig_precopy_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = qmig_migf_release,
};

/* ---- resuming ---- */

static int qmig_resume_sec_hdr(struct qmig_migf *m)
{
	const struct qmig_sec *s = (const struct qmig_sec *)m->sec_buf;
	u16 type = le16_to_cpu(s->type);
	u32 len = le32_to_cpu(s->len);
	u32 want;

	if (le32_to_cpu(s->magic) != QMIG_SEC_MAGIC || s->flags)
		return -EINVAL;
	if (!m->got_hdr != (type == QMIG_SEC_HEADER))
		return -EINVAL;		/* HEADER first, and only once */
	switch (type) {
	case QMIG_SEC_HEADER:
		want = QMIG_HDR_PAY;
		break;
	case QMIG_SEC_BAR2:
		if (!(m->stream_flags & QMIG_HDR_HAS_BAR2))
			return -EINVAL;
		want = QMIG_CHUNK_PAY;
		break;
	case QMIG_SEC_DEVICE:
		if (m->got_dev)
			return -EINVAL;
		want = QMIG_DEV_PAY;
		break;
	case QMIG_SEC_END:
		want = QMIG_END_PAY;
		break;
	default:
		return -EINVAL;
	}
	if (len != want)
		return -EINVAL;
	m->sec_type = type;
	m->pay_len = len;
	m->pay_have = 0;
	return 0;
}

static int qmig_resume_sec_done(struct qmig_migf *m)
{
	const struct qmig_sec *s = (const struct qmig_sec *)m->sec_buf;
	u32 len = m->pay_len;

	if (le32_to_cpu(s->crc) != ~crc32_le(~0U, m->payload, len))
		return -EINVAL;

	switch (m->sec_type) {
	case QMIG_SEC_HEADER: {
		const struct qmig_stream_hdr *h = (const void *)m->payload;
		u32 flags = le32_to_cpu(h->flags);

		if (le32_to_cpu(h->version) != QMIG_STREAM_VERSION ||
		    (flags & ~QMIG_HDR_FLAGS) ||
		    le32_to_cpu(h->type) != m->q->type->code ||
		    le32_to_cpu(h->cfg_size) != QMIG_CFG_SIZE ||
		    le32_to_cpu(h->bar0_size) != QMIG_BAR0_SIZE ||
		    le32_to_cpu(h->bar2_size) != QMIG_BAR2_SIZE ||
		    le32_to_cpu(h->chunk_size) != QMIG_CHUNK ||
		    le32_to_cpu(h->dev_size) != QMIG_DEV_PAY)
			return -EINVAL;
		m->stream_flags = flags;
		m->got_hdr = true;
		break;
	}
	case QMIG_SEC_BAR2: {
		const struct qmig_chunk_hdr *ch = (const void *)m->payload;
		u32 off = le32_to_cpu(ch->offset);

		if (ch->reserved || off % QMIG_CHUNK || off >= QMIG_BAR2_SIZE)
			return -EINVAL;
		memcpy(m->stage_bar2 + off, m->payload + sizeof(*ch), QMIG_CHUNK);
		set_bit(off / QMIG_CHUNK, m->chunks);
		break;
	}
	case QMIG_SEC_DEVICE:
		memcpy(&m->stage_dev, m->payload, sizeof(m->stage_dev));
		m->got_dev = true;
		break;
	case QMIG_SEC_END: {
		const struct qmig_stream_end *e = (const void *)m->payload;

		if (le64_to_cpu(e->total_len) !=
		    m->received + QMIG_SEC_SIZE(QMIG_END_PAY) ||
		    le32_to_cpu(e->nsec) != m->nsec ||
		    le32_to_cpu(e->stream_crc) != ~m->crc)
			return -EINVAL;
		m->got_end = true;
		break;
	}
	}

	if (m->sec_type != QMIG_SEC_END) {
		m->crc = crc32_le(m->crc, m->sec_buf, sizeof(m->sec_buf));
		m->crc = crc32_le(m->crc, m->payload, len);
		m->nsec++;
	}
	m->received += QMIG_SEC_SIZE(len);
	m->sec_have = 0;
	m->pay_have = 0;
	m->pay_len = 0;
	return 0;
}

static ssize_t qmig_resume_write(struct file *filp, const char __user *ubuf,
				 size_t len, loff_t *pos)
{
	struct qmig_migf *m = filp->private_data;
	size_t done = 0, n;
	int ret = 0;

	if (pos)
		return -ESPIPE;

	mutex_lock(&m->lock);
	if (m->disabled) {
		ret = -ENODEV;
		goto out;
	}
	if (m->broken) {
		ret = -EINVAL;
		goto out;
	}
	while (done < len) {
		if (m->got_end) {
			ret = -EINVAL;		/* bytes after END */
			break;
		}
		if (m->sec_have < sizeof(m->sec_buf)) {
			n = min(sizeof(m->sec_buf) - m->sec_have, len - done);
			if (copy_from_user(m->sec_buf + m->sec_have, ubuf + done, n)) {
				ret = -EFAULT;
				break;
			}
			m->sec_have += n;
			done += n;
			if (m->sec_have == sizeof(m->sec_buf)) {
				ret = qmig_resume_sec_hdr(m);
				if (ret)
					break;
			}
			continue;
		}
		n = min_t(size_t, m->pay_len - m->pay_have, len - done);
		if (copy_from_user(m->payload + m->pay_have, ubuf + done, n)) {
			ret = -EFAULT;
			break;
		}
		m->pay_have += n;
		done += n;
		if (m->pay_have == m->pay_len) {
			ret = qmig_resume_sec_done(m);
			if (ret)
				break;
		}
	}
	if (ret == -EINVAL) {
		m->broken = true;
		atomic64_inc(&m->q->stats.load_errors);
	}
out:
	mutex_unlock(&m->lock);
	if (ret)
		return ret;
	return done;
}

static const struct file_operations qmig_resume_fops = {
	.owner = THIS_MODULE,
	.write = qmig_resume_write,
	.release = qmig_migf_release,
};

static int qmig_image_check(const struct qmig_dev_image *img)
{
	u32 cont_ctrl = le32_to_cpu(img->cont_ctrl);
	u32 cont_size = le32_to_cpu(img->cont_size);
	u32 p2p_ctrl = le32_to_cpu(img->p2p_ctrl);
	u32 p2p_slots = le32_to_cpu(img->p2p_slots);
	u32 iv = le32_to_cpu(img->interval_us);

	if ((cont_ctrl & ~QMIG_CONT_EN) || (p2p_ctrl & ~QMIG_P2P_CTRL_MASK) ||
	    (p2p_ctrl & QMIG_P2P_MODE_MASK) >> QMIG_P2P_MODE_SHIFT > QMIG_P2P_MODE_DIRECT ||
	    (le32_to_cpu(img->status) & ~QMIG_ST_STICKY) ||
	    iv < QMIG_INTERVAL_MIN_US || iv > QMIG_INTERVAL_MAX_US ||
	    le32_to_cpu(img->tag) > 0xffff || p2p_slots > QMIG_RX_SLOTS ||
	    !le64_to_cpu(img->cont_seq) || !le64_to_cpu(img->p2p_seq))
		return -EINVAL;
	if ((cont_ctrl & QMIG_CONT_EN) &&
	    (!qmig_ring_ok(le64_to_cpu(img->cont_base), cont_size) ||
	     le32_to_cpu(img->cont_head) >= cont_size / QMIG_REC_SIZE))
		return -EINVAL;
	if ((p2p_ctrl & QMIG_P2P_TX) &&
	    (!p2p_slots || le64_to_cpu(img->p2p_target) % QMIG_REC_SIZE))
		return -EINVAL;
	return 0;
}

/* RESUMING -> STOP: validate everything, then apply atomically. */
static int qmig_load(struct qmig_state *q)
{
	struct qmig_migf *m = q->resuming_migf;
	const struct qmig_dev_image *img;
	struct qmig_regs *r = &q->r;
	unsigned int i;
	int ret = -EINVAL;

	lockdep_assert_held(&q->lock);
	if (!m)
		goto fail;
	mutex_lock(&m->lock);
	img = &m->stage_dev;
	if (m->broken || !m->got_hdr || !m->got_dev || !m->got_end ||
	    m->sec_have || m->pay_have ||
	    ((m->stream_flags & QMIG_HDR_HAS_BAR2) &&
	     !bitmap_full(m->chunks, QMIG_NCHUNKS)) ||
	    qmig_image_check(img)) {
		mutex_unlock(&m->lock);
		goto fail;
	}

	qmig_cfg_write(q, 0, img->config, QMIG_CFG_SIZE);
#define X(n) r->n = le64_to_cpu(img->n);
	QMIG_REGS64(X)
#undef X
#define X(n) r->n = le32_to_cpu(img->n);
	QMIG_REGS32(X)
#undef X
	for (i = 0; i < QMIG_RX_SLOTS; i++)
		r->rx_slot_seq[i] = le64_to_cpu(img->rx_slot_seq[i]);
	atomic_set(&q->unmap_pending, 0);
	qmig_update_ranges(q);
	if (m->stream_flags & QMIG_HDR_HAS_BAR2) {
		spin_lock(&q->mem_lock);
		memcpy(q->mem, m->stage_bar2, QMIG_BAR2_SIZE);
		spin_unlock(&q->mem_lock);
	}
	mutex_unlock(&m->lock);
	atomic64_inc(&q->stats.loads);
	return 0;

fail:
	atomic64_inc(&q->stats.load_errors);
	return ret;
}

/* ---- the FSM ---- */

static bool qmig_fault_arc_hit(struct qmig_state *q,
			       enum vfio_device_mig_state cur,
			       enum vfio_device_mig_state next)
{
	struct qmig_faults *f = &q->f;

	if (!f->arc_set ||
	    (f->arc_cur >= 0 && f->arc_cur != cur) ||
	    (f->arc_next >= 0 && f->arc_next != next))
		return false;
	f->arc_hits++;
	if (f->arc_once)
		f->arc_set = false;
	return true;
}

static struct file *qmig_new_saving(struct qmig_state *q, bool precopy)
{
	struct qmig_migf *m;
	int ret;

	m = qmig_migf_new(q, true, !q->f.drop_state);
	if (IS_ERR(m))
		return ERR_CAST(m);
	ret = qmig_save_begin(q, m, precopy);
	if (!ret && !precopy)
		ret = qmig_save_final(q, m);
	if (ret) {
		fput(m->filp);
		return ERR_PTR(ret);
	}
	q->saving_migf = m;
	return get_file(m->filp);
}

/* One arc.  The caller got @next from vfio_mig_get_next_state(). */
static struct file *qmig_step(struct qmig_state *q,
			      enum vfio_device_mig_state next)
{
	enum vfio_device_mig_state cur = q->state;
	struct file *res = NULL;
	int ret;

	if (qmig_fault_arc_hit(q, cur, next)) {
		qmig_log_arc(q, cur, next, false);
		atomic64_inc(&q->stats.arc_failures);
		if (q->f.arc_mode == QMIG_FAIL_ERROR) {
			qmig_drop_files(q);
			qmig_set_mstate(q, VFIO_DEVICE_STATE_ERROR);
		}
		return ERR_PTR(-EIO);
	}

	if (next == VFIO_DEVICE_STATE_STOP_COPY) {
		if (cur == VFIO_DEVICE_STATE_STOP) {
			res = qmig_new_saving(q, false);
		} else if (qmig_st_precopy(cur)) {
			if (q->saving_migf) {
				ret = qmig_save_final(q, q->saving_migf);
				res = ret ? ERR_PTR(ret) : NULL;
			} else {	/* only after stale_state_on_close */
				res = qmig_new_saving(q, false);
			}
		} else {
			res = ERR_PTR(-EINVAL);
		}
	} else if (qmig_st_precopy(next) && !qmig_st_precopy(cur)) {
		/* RUNNING -> PRE_COPY, RUNNING_P2P -> PRE_COPY_P2P */
		if (cur != VFIO_DEVICE_STATE_RUNNING &&
		    cur != VFIO_DEVICE_STATE_RUNNING_P2P)
			res = ERR_PTR(-EINVAL);
		else
			res = qmig_new_saving(q, true);
	} else if (qmig_st_saving(cur) && !qmig_st_saving(next)) {
		/* PRE_COPY -> RUNNING, PRE_COPY_P2P -> RUNNING_P2P, STOP_COPY -> STOP */
		qmig_drop_files(q);
	} else if (next == VFIO_DEVICE_STATE_RESUMING) {
		if (cur != VFIO_DEVICE_STATE_STOP) {
			res = ERR_PTR(-EINVAL);
		} else {
			struct qmig_migf *m = qmig_migf_new(q, false, false);

			if (IS_ERR(m)) {
				res = ERR_CAST(m);
			} else {
				qmig_drop_files(q);
				qmig_device_reset(q);
				q->resuming_migf = m;
				res = get_file(m->filp);
			}
		}
	} else if (cur == VFIO_DEVICE_STATE_RESUMING) {
		ret = next == VFIO_DEVICE_STATE_STOP ? qmig_load(q) : -EINVAL;
		if (ret)
			res = ERR_PTR(ret);
		else
			qmig_drop_files(q);
	} else if (!((cur == VFIO_DEVICE_STATE_RUNNING &&
		      (next == VFIO_DEVICE_STATE_RUNNING_P2P ||
		       next == VFIO_DEVICE_STATE_STOP)) ||
		     (cur == VFIO_DEVICE_STATE_RUNNING_P2P &&
		      (next == VFIO_DEVICE_STATE_RUNNING ||
		       next == VFIO_DEVICE_STATE_STOP)) ||
		     (cur == VFIO_DEVICE_STATE_STOP &&
		      (next == VFIO_DEVICE_STATE_RUNNING ||
		       next == VFIO_DEVICE_STATE_RUNNING_P2P)) ||
		     (cur == VFIO_DEVICE_STATE_PRE_COPY &&
		      next == VFIO_DEVICE_STATE_PRE_COPY_P2P) ||
		     (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P &&
		      next == VFIO_DEVICE_STATE_PRE_COPY))) {
		WARN_ONCE(1, "qmigdev: unexpected arc %s->%s\n",
			  qmig_state_name(cur), qmig_state_name(next));
		res = ERR_PTR(-EINVAL);
	}
	/*
	 * The remaining arcs only change what the engines may do; since every
	 * DMA is issued under q->lock after checking q->state, setting the
	 * state below is the quiesce point.
	 */
	if (IS_ERR(res)) {
		qmig_log_arc(q, cur, next, false);
		atomic64_inc(&q->stats.arc_failures);
		return res;
	}
	qmig_log_arc(q, cur, next, true);
	qmig_set_mstate(q, next);
	/*
	 * p2p_in_running_p2p: outbound P2P queued before the quiesce point still
	 * goes out after it.  QEMU may leave a P2P-quiesced state within a
	 * millisecond, far less than an engine period, so the bug is made to show
	 * on every arc into one, not only when the period happens to fall there.
	 */
	if (q->f.p2p_in_running_p2p && qmig_st_p2p_quiesced(next) &&
	    !qmig_st_p2p_quiesced(cur) && qmig_p2p_should_run(q))
		qmig_p2p_tick(q);
	return res;
}

static struct file *qmig_set_state(struct vfio_device *vdev,
				   enum vfio_device_mig_state new_state)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	struct file *res = NULL;

	mutex_lock(&q->lock);
	/*
	 * Only VFIO_DEVICE_RESET leaves ERROR.  Do not ask
	 * vfio_mig_get_next_state() from ERROR (or from a state the current
	 * flags do not allow): it WARNs on such a cur_fsm.
	 */
	if (!qmig_state_supported(q->state, vdev->migration_flags) ||
	    q->state == VFIO_DEVICE_STATE_ERROR) {
		res = ERR_PTR(-EINVAL);
		goto out;
	}
	while (q->state != new_state) {
		enum vfio_device_mig_state next;
		int ret;

		/* exactly one call per arc */
		ret = vfio_mig_get_next_state(vdev, q->state, new_state, &next);
		if (ret) {
			res = ERR_PTR(ret);
			break;
		}
		res = qmig_step(q, next);
		if (IS_ERR(res))
			break;
		if (WARN_ON(res && next != new_state)) {
			fput(res);
			res = ERR_PTR(-EINVAL);
			break;
		}
	}
out:
	qmig_kick(q);
	mutex_unlock(&q->lock);
	return res;
}

static int qmig_get_state(struct vfio_device *vdev,
			  enum vfio_device_mig_state *cur)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);

	mutex_lock(&q->lock);
	*cur = q->state;
	mutex_unlock(&q->lock);
	return 0;
}

static int qmig_get_data_size(struct vfio_device *vdev, unsigned long *len)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	struct qmig_migf *m;
	u64 size;

	mutex_lock(&q->lock);
	m = q->saving_migf;
	if (q->f.lie_data_size >= 0) {
		size = q->f.lie_data_size;
	} else if (m) {
		mutex_lock(&m->lock);
		size = m->len - m->off;
		if (!m->final)
			size += (u64)qmig_count_dirty(q, m) *
				QMIG_SEC_SIZE(QMIG_CHUNK_PAY) +
				QMIG_SEC_SIZE(QMIG_DEV_PAY) +
				QMIG_SEC_SIZE(QMIG_END_PAY);
		mutex_unlock(&m->lock);
	} else {
		size = QMIG_FULL_STREAM;
		if (q->f.drop_state)
			size -= QMIG_NCHUNKS * QMIG_SEC_SIZE(QMIG_CHUNK_PAY);
	}
	mutex_unlock(&q->lock);
	*len = size;
	return 0;
}

static const struct vfio_migration_ops qmig_mig_ops = {
	.migration_set_state = qmig_set_state,
	.migration_get_state = qmig_get_state,
	.migration_get_data_size = qmig_get_data_size,
};

/* ---- vfio_device_ops ---- */

static int qmig_reset(struct qmig_state *q)
{
	int ret = 0;

	mutex_lock(&q->lock);
	switch (q->f.refuse_reset) {
	case QMIG_REFUSE_FAIL:
		ret = -EIO;
		fallthrough;
	case QMIG_REFUSE_IGNORE:
		atomic64_inc(&q->stats.resets_refused);
		goto out;
	}
	qmig_drop_files(q);
	qmig_set_mstate(q, VFIO_DEVICE_STATE_RUNNING);
	qmig_device_reset(q);
	atomic64_inc(&q->stats.resets);
out:
	qmig_kick(q);
	mutex_unlock(&q->lock);
	return ret;
}

static int qmig_open_device(struct vfio_device *vdev)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);

	mutex_lock(&q->lock);
	if (current->mm) {
		mmgrab(current->mm);	/* pins the mm_struct only: no reuse */
		WRITE_ONCE(q->owner_mm, current->mm);
	}
	WRITE_ONCE(q->opened, true);
	mutex_unlock(&q->lock);
	return 0;
}

static void qmig_close_device(struct vfio_device *vdev)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	struct mm_struct *mm;

	mutex_lock(&q->lock);
	qmig_drop_files(q);
	q->r.cont_ctrl &= ~QMIG_CONT_EN;
	q->r.p2p_ctrl &= ~(QMIG_P2P_TX | QMIG_P2P_RX);
	qmig_update_ranges(q);
	if (!q->f.stale_state_on_close)
		qmig_set_mstate(q, VFIO_DEVICE_STATE_RUNNING);
	WRITE_ONCE(q->opened, false);
	mm = q->owner_mm;
	mutex_unlock(&q->lock);
	/* the worker sees !opened and does not re-arm: no vfio_dma_rw after this */
	cancel_delayed_work_sync(&q->work);
	/*
	 * Peers may still compare the pointer under qmig_list_lock; clear it
	 * there before dropping the pin so it cannot be reused meanwhile.
	 */
	mutex_lock(&qmig_list_lock);
	WRITE_ONCE(q->owner_mm, NULL);
	mutex_unlock(&qmig_list_lock);
	if (mm)
		mmdrop(mm);
}

static void qmig_dma_unmap(struct vfio_device *vdev, u64 iova, u64 length)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	int hit = 0;

	/* must not take q->lock: see the lock order at the top */
	spin_lock(&q->range_lock);
	if (qmig_ranges_overlap(iova, length, q->cont_rbase, q->cont_rlen))
		hit |= QMIG_UNMAP_CONT;
	if (qmig_ranges_overlap(iova, length, q->p2p_rbase, q->p2p_rlen))
		hit |= QMIG_UNMAP_P2P;
	spin_unlock(&q->range_lock);
	if (hit) {
		atomic_or(hit, &q->unmap_pending);
		atomic64_inc(&q->stats.unmap_hits);
	}
}

static long qmig_ioctl(struct vfio_device *vdev, unsigned int cmd,
		       unsigned long arg)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	void __user *uarg = (void __user *)arg;
	unsigned long minsz;

	switch (cmd) {
	case VFIO_DEVICE_GET_INFO: {
		struct vfio_device_info info;

		minsz = offsetofend(struct vfio_device_info, num_irqs);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz)
			return -EINVAL;
		info.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
		info.num_regions = VFIO_PCI_NUM_REGIONS;
		info.num_irqs = VFIO_PCI_NUM_IRQS;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_REGION_INFO: {
		struct vfio_region_info info;

		minsz = offsetofend(struct vfio_region_info, offset);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz || info.index >= VFIO_PCI_NUM_REGIONS)
			return -EINVAL;
		info.cap_offset = 0;
		info.offset = QMIG_INDEX_TO_OFF(info.index);
		info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
		switch (info.index) {
		case VFIO_PCI_CONFIG_REGION_INDEX:
			info.size = QMIG_CFG_SIZE;
			break;
		case VFIO_PCI_BAR0_REGION_INDEX:
			info.size = QMIG_BAR0_SIZE;
			break;
		case VFIO_PCI_BAR2_REGION_INDEX:
			info.size = QMIG_BAR2_SIZE;
			info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
			break;
		default:
			info.size = 0;
			info.flags = 0;
			break;
		}
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_GET_IRQ_INFO: {
		struct vfio_irq_info info;

		minsz = offsetofend(struct vfio_irq_info, count);
		if (copy_from_user(&info, uarg, minsz))
			return -EFAULT;
		if (info.argsz < minsz || info.index >= VFIO_PCI_NUM_IRQS)
			return -EINVAL;
		info.flags = 0;		/* no interrupts at all */
		info.count = 0;
		return copy_to_user(uarg, &info, minsz) ? -EFAULT : 0;
	}
	case VFIO_DEVICE_SET_IRQS: {
		struct vfio_irq_set hdr;

		minsz = offsetofend(struct vfio_irq_set, count);
		if (copy_from_user(&hdr, uarg, minsz))
			return -EFAULT;
		if (hdr.argsz < minsz || hdr.index >= VFIO_PCI_NUM_IRQS)
			return -EINVAL;
		/* nothing to enable; "disable everything" is a no-op */
		return hdr.count ? -EINVAL : 0;
	}
	case VFIO_DEVICE_RESET:
		return qmig_reset(q);
	}
	return -ENOTTY;
}

static int qmig_init_dev(struct vfio_device *vdev)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);
	struct mdev_device *mdev = to_mdev_device(vdev->dev);

	q->mdev = mdev;
	q->type = container_of(mdev->type, struct qmig_type, type);
	q->mem = vmalloc_user(QMIG_BAR2_SIZE);
	if (!q->mem)
		return -ENOMEM;
	q->bounce = vmalloc(QMIG_BAR2_SIZE);
	if (!q->bounce) {
		vfree(q->mem);
		return -ENOMEM;
	}
	mutex_init(&q->lock);
	spin_lock_init(&q->mem_lock);
	spin_lock_init(&q->range_lock);
	INIT_DELAYED_WORK(&q->work, qmig_work_fn);
	INIT_LIST_HEAD(&q->node);
#define X(n) atomic64_set(&q->stats.n, 0);
	QMIG_STATS(X)
#undef X
	q->f.lie_data_size = -1;
	q->default_tag = atomic_inc_return(&qmig_tag_seq) & 0xffff;

	mutex_lock(&q->lock);
	qmig_init_config(q);
	qmig_regs_reset(q);
	q->state = VFIO_DEVICE_STATE_RUNNING;
	mutex_unlock(&q->lock);

	vdev->migration_flags = q->type->flags;
	vdev->mig_ops = &qmig_mig_ops;
	return 0;
}

static void qmig_release_dev(struct vfio_device *vdev)
{
	struct qmig_state *q = container_of(vdev, struct qmig_state, vdev);

	cancel_delayed_work_sync(&q->work);	/* never pending here; cheap */
	vfree(q->bounce);
	vfree(q->mem);
	mutex_destroy(&q->lock);
}

static const struct vfio_device_ops qmig_dev_ops = {
	.name = QMIG_NAME,
	.init = qmig_init_dev,
	.release = qmig_release_dev,
	.open_device = qmig_open_device,
	.close_device = qmig_close_device,
	.read = qmig_read,
	.write = qmig_write,
	.ioctl = qmig_ioctl,
	.mmap = qmig_mmap,
	.dma_unmap = qmig_dma_unmap,
	.bind_iommufd = vfio_iommufd_emulated_bind,
	.unbind_iommufd = vfio_iommufd_emulated_unbind,
	.attach_ioas = vfio_iommufd_emulated_attach_ioas,
	.detach_ioas = vfio_iommufd_emulated_detach_ioas,
};

/* ---- per-instance sysfs: /sys/bus/mdev/devices/<uuid>/qmigdev/ ---- */

static struct qmig_state *qmig_from_dev(struct device *dev)
{
	return dev_get_drvdata(dev);
}

#define QMIG_COUNTER_ATTR(name)						\
static ssize_t name##_show(struct device *dev,				\
			   struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, "%lld\n",				\
			  atomic64_read(&qmig_from_dev(dev)->stats.name)); \
}									\
static DEVICE_ATTR_RO(name)

QMIG_COUNTER_ATTR(dma_records);
QMIG_COUNTER_ATTR(dma_ops);
QMIG_COUNTER_ATTR(dma_errors);
QMIG_COUNTER_ATTR(p2p_sent);
QMIG_COUNTER_ATTR(p2p_direct);
QMIG_COUNTER_ATTR(p2p_received);
QMIG_COUNTER_ATTR(writes_while_stopped);
QMIG_COUNTER_ATTR(p2p_while_quiesced);
QMIG_COUNTER_ATTR(rx_while_stopped);
QMIG_COUNTER_ATTR(unmap_hits);
QMIG_COUNTER_ATTR(resets);
QMIG_COUNTER_ATTR(resets_refused);
QMIG_COUNTER_ATTR(saves);
QMIG_COUNTER_ATTR(loads);
QMIG_COUNTER_ATTR(load_errors);
QMIG_COUNTER_ATTR(arc_failures);

static ssize_t counters_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct qmig_state *q = qmig_from_dev(dev);
	int n = 0;

#define X(name) n += sysfs_emit_at(buf, n, "%s %lld\n", #name,		\
				   atomic64_read(&q->stats.name));
	QMIG_STATS(X)
#undef X
	return n;
}
static DEVICE_ATTR_RO(counters);

static ssize_t clear_counters_store(struct device *dev,
				    struct device_attribute *attr,
				    const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);

#define X(name) atomic64_set(&q->stats.name, 0);
	QMIG_STATS(X)
#undef X
	return count;
}
static DEVICE_ATTR_WO(clear_counters);

static ssize_t state_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  qmig_state_name(READ_ONCE(qmig_from_dev(dev)->state)));
}
static DEVICE_ATTR_RO(state);

static ssize_t bar2_gpa_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "0x%llx\n", READ_ONCE(qmig_from_dev(dev)->bar2_gpa));
}
static DEVICE_ATTR_RO(bar2_gpa);

static ssize_t arcs_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct qmig_state *q = qmig_from_dev(dev);
	unsigned int i;
	int n = 0;

	mutex_lock(&q->lock);
	for (i = 0; i < q->arc_count; i++) {
		const struct qmig_arc *a =
			&q->arcs[(q->arc_head + QMIG_ARC_LOG - q->arc_count + i) %
				 QMIG_ARC_LOG];

		n += sysfs_emit_at(buf, n, "%s->%s%s\n", qmig_state_name(a->cur),
				   qmig_state_name(a->next), a->ok ? "" : " FAILED");
	}
	mutex_unlock(&q->lock);
	return n;
}

static ssize_t arcs_store(struct device *dev, struct device_attribute *attr,
			  const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);

	mutex_lock(&q->lock);
	q->arc_count = 0;
	q->arc_head = 0;
	mutex_unlock(&q->lock);
	return count;
}
static DEVICE_ATTR_RW(arcs);

static int qmig_emit_flags(char *buf, u32 flags)
{
	return sysfs_emit(buf, "0x%x%s%s%s\n", flags,
			  flags & VFIO_MIGRATION_STOP_COPY ? " STOP_COPY" : "",
			  flags & VFIO_MIGRATION_P2P ? " P2P" : "",
			  flags & VFIO_MIGRATION_PRE_COPY ? " PRE_COPY" : "");
}

static ssize_t migration_flags_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return qmig_emit_flags(buf, READ_ONCE(qmig_from_dev(dev)->vdev.migration_flags));
}
static DEVICE_ATTR_RO(migration_flags);

static ssize_t qmig_flag_store(struct device *dev, const char *buf,
			       size_t count, u32 bit)
{
	struct qmig_state *q = qmig_from_dev(dev);
	u32 flags;
	bool on;
	int ret;

	ret = kstrtobool(buf, &on);
	if (ret)
		return ret;
	mutex_lock(&q->lock);
	flags = q->vdev.migration_flags;
	flags = on ? flags | bit : flags & ~bit;
	if (q->opened)
		ret = -EBUSY;		/* only before the device is opened */
	else if (on && !(q->type->flags & bit))
		ret = -EINVAL;		/* the mdev type does not offer it */
	else if (!qmig_state_supported(q->state, flags))
		ret = -EBUSY;		/* a stale state would become invalid */
	else
		WRITE_ONCE(q->vdev.migration_flags, flags);
	mutex_unlock(&q->lock);
	return ret ? ret : count;
}

static ssize_t enable_p2p_show(struct device *dev, struct device_attribute *attr,
			       char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  !!(READ_ONCE(qmig_from_dev(dev)->vdev.migration_flags) &
			     VFIO_MIGRATION_P2P));
}

static ssize_t enable_p2p_store(struct device *dev, struct device_attribute *attr,
				const char *buf, size_t count)
{
	return qmig_flag_store(dev, buf, count, VFIO_MIGRATION_P2P);
}
static DEVICE_ATTR_RW(enable_p2p);

static ssize_t enable_precopy_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n",
			  !!(READ_ONCE(qmig_from_dev(dev)->vdev.migration_flags) &
			     VFIO_MIGRATION_PRE_COPY));
}

static ssize_t enable_precopy_store(struct device *dev,
				    struct device_attribute *attr,
				    const char *buf, size_t count)
{
	return qmig_flag_store(dev, buf, count, VFIO_MIGRATION_PRE_COPY);
}
static DEVICE_ATTR_RW(enable_precopy);

/* boolean fault knobs */
#define QMIG_BOOL_FAULT_ATTR(name)					\
static ssize_t name##_show(struct device *dev,				\
			   struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, "%d\n", READ_ONCE(qmig_from_dev(dev)->f.name)); \
}									\
static ssize_t name##_store(struct device *dev,				\
			    struct device_attribute *attr,		\
			    const char *buf, size_t count)		\
{									\
	struct qmig_state *q = qmig_from_dev(dev);			\
	bool v;								\
	int ret = kstrtobool(buf, &v);					\
									\
	if (ret)							\
		return ret;						\
	mutex_lock(&q->lock);						\
	WRITE_ONCE(q->f.name, v);					\
	qmig_kick(q);							\
	mutex_unlock(&q->lock);						\
	return count;							\
}									\
static DEVICE_ATTR_RW(name)

QMIG_BOOL_FAULT_ATTR(dma_after_stop);
QMIG_BOOL_FAULT_ATTR(p2p_in_running_p2p);
QMIG_BOOL_FAULT_ATTR(corrupt_stream);
QMIG_BOOL_FAULT_ATTR(truncate_stream);
QMIG_BOOL_FAULT_ATTR(drop_state);
QMIG_BOOL_FAULT_ATTR(stale_state_on_close);

static const char * const qmig_fail_modes[] = { "stay", "error" };
static const char * const qmig_lie_precopy_modes[] = { "off", "zero", "stuck" };
static const char * const qmig_refuse_modes[] = { "off", "fail", "ignore" };

static ssize_t fail_arc_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct qmig_state *q = qmig_from_dev(dev);
	struct qmig_faults *f = &q->f;
	ssize_t n;

	mutex_lock(&q->lock);
	if (!f->arc_set)
		n = sysfs_emit(buf, "none hits=%u\n", f->arc_hits);
	else
		n = sysfs_emit(buf, "%s->%s %s%s hits=%u\n",
			       f->arc_cur < 0 ? "*" : qmig_state_name(f->arc_cur),
			       f->arc_next < 0 ? "*" : qmig_state_name(f->arc_next),
			       qmig_fail_modes[f->arc_mode],
			       f->arc_once ? " once" : "", f->arc_hits);
	mutex_unlock(&q->lock);
	return n;
}

/* "CUR->NEXT [stay|error] [once]", "*" matches any state; "none" clears. */
static ssize_t fail_arc_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);
	int cur, next, mode = QMIG_FAIL_STAY;
	char *s, *p, *tok, *arrow;
	bool once = false;
	ssize_t ret;

	s = kstrndup(buf, count, GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	p = strim(s);
	if (!*p || !strcasecmp(p, "none") || !strcasecmp(p, "off")) {
		mutex_lock(&q->lock);
		q->f.arc_set = false;
		q->f.arc_hits = 0;
		mutex_unlock(&q->lock);
		ret = count;
		goto out;
	}
	ret = -EINVAL;
	tok = strsep(&p, " \t");
	arrow = strstr(tok, "->");
	if (!arrow)
		goto out;
	*arrow = '\0';
	cur = strcmp(tok, "*") ? qmig_state_from_name(tok) : -1;
	next = strcmp(arrow + 2, "*") ? qmig_state_from_name(arrow + 2) : -1;
	if (cur == -EINVAL || next == -EINVAL)
		goto out;
	while ((tok = strsep(&p, " \t"))) {
		int i;

		if (!*tok)
			continue;
		if (!strcasecmp(tok, "once")) {
			once = true;
			continue;
		}
		i = match_string(qmig_fail_modes, ARRAY_SIZE(qmig_fail_modes), tok);
		if (i < 0)
			goto out;
		mode = i;
	}
	mutex_lock(&q->lock);
	q->f.arc_set = true;
	q->f.arc_cur = cur;
	q->f.arc_next = next;
	q->f.arc_mode = mode;
	q->f.arc_once = once;
	q->f.arc_hits = 0;
	mutex_unlock(&q->lock);
	ret = count;
out:
	kfree(s);
	return ret;
}
static DEVICE_ATTR_RW(fail_arc);

static ssize_t lie_data_size_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	s64 v = READ_ONCE(qmig_from_dev(dev)->f.lie_data_size);

	return v < 0 ? sysfs_emit(buf, "off\n") : sysfs_emit(buf, "%lld\n", v);
}

static ssize_t lie_data_size_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);
	s64 v = -1;
	int ret;

	if (!sysfs_streq(buf, "off")) {
		ret = kstrtos64(buf, 0, &v);
		if (ret)
			return ret;
	}
	mutex_lock(&q->lock);
	WRITE_ONCE(q->f.lie_data_size, v < 0 ? -1 : v);
	mutex_unlock(&q->lock);
	return count;
}
static DEVICE_ATTR_RW(lie_data_size);

static ssize_t lie_precopy_info_show(struct device *dev,
				     struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", qmig_lie_precopy_modes[
			  READ_ONCE(qmig_from_dev(dev)->f.lie_precopy_info)]);
}

static ssize_t lie_precopy_info_store(struct device *dev,
				      struct device_attribute *attr,
				      const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);
	int i = sysfs_match_string(qmig_lie_precopy_modes, buf);

	if (i < 0)
		return i;
	mutex_lock(&q->lock);
	WRITE_ONCE(q->f.lie_precopy_info, i);
	mutex_unlock(&q->lock);
	return count;
}
static DEVICE_ATTR_RW(lie_precopy_info);

static ssize_t refuse_reset_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", qmig_refuse_modes[
			  READ_ONCE(qmig_from_dev(dev)->f.refuse_reset)]);
}

static ssize_t refuse_reset_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);
	int i = sysfs_match_string(qmig_refuse_modes, buf);
	bool v;

	if (i < 0) {		/* also accept a boolean: 1 = fail */
		if (kstrtobool(buf, &v))
			return -EINVAL;
		i = v ? QMIG_REFUSE_FAIL : QMIG_REFUSE_OFF;
	}
	mutex_lock(&q->lock);
	WRITE_ONCE(q->f.refuse_reset, i);
	mutex_unlock(&q->lock);
	return count;
}
static DEVICE_ATTR_RW(refuse_reset);

static ssize_t delay_save_ms_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(qmig_from_dev(dev)->f.delay_save_ms));
}

static ssize_t delay_save_ms_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct qmig_state *q = qmig_from_dev(dev);
	u32 v;
	int ret = kstrtou32(buf, 0, &v);

	if (ret)
		return ret;
	if (v > QMIG_DELAY_MAX_MS)
		return -ERANGE;
	mutex_lock(&q->lock);
	WRITE_ONCE(q->f.delay_save_ms, v);
	mutex_unlock(&q->lock);
	return count;
}
static DEVICE_ATTR_RW(delay_save_ms);

static struct attribute *qmig_dev_attrs[] = {
	&dev_attr_state.attr,
	&dev_attr_migration_flags.attr,
	&dev_attr_enable_p2p.attr,
	&dev_attr_enable_precopy.attr,
	&dev_attr_bar2_gpa.attr,
	&dev_attr_arcs.attr,
	&dev_attr_counters.attr,
	&dev_attr_clear_counters.attr,
	&dev_attr_dma_records.attr,
	&dev_attr_dma_ops.attr,
	&dev_attr_dma_errors.attr,
	&dev_attr_p2p_sent.attr,
	&dev_attr_p2p_direct.attr,
	&dev_attr_p2p_received.attr,
	&dev_attr_writes_while_stopped.attr,
	&dev_attr_p2p_while_quiesced.attr,
	&dev_attr_rx_while_stopped.attr,
	&dev_attr_unmap_hits.attr,
	&dev_attr_resets.attr,
	&dev_attr_resets_refused.attr,
	&dev_attr_saves.attr,
	&dev_attr_loads.attr,
	&dev_attr_load_errors.attr,
	&dev_attr_arc_failures.attr,
	&dev_attr_fail_arc.attr,
	&dev_attr_dma_after_stop.attr,
	&dev_attr_p2p_in_running_p2p.attr,
	&dev_attr_corrupt_stream.attr,
	&dev_attr_truncate_stream.attr,
	&dev_attr_drop_state.attr,
	&dev_attr_lie_data_size.attr,
	&dev_attr_lie_precopy_info.attr,
	&dev_attr_delay_save_ms.attr,
	&dev_attr_stale_state_on_close.attr,
	&dev_attr_refuse_reset.attr,
	NULL,
};

static const struct attribute_group qmig_dev_group = {
	.name = QMIG_NAME,
	.attrs = qmig_dev_attrs,
};

static const struct attribute_group *qmig_dev_groups[] = {
	&qmig_dev_group,
	NULL,
};

/* ---- mdev driver and parent ---- */

static int qmig_probe(struct mdev_device *mdev)
{
	struct qmig_state *q;
	int ret;

	q = vfio_alloc_device(qmig_state, vdev, &mdev->dev, &qmig_dev_ops);
	if (IS_ERR(q))
		return PTR_ERR(q);
	dev_set_drvdata(&mdev->dev, q);
	ret = vfio_register_emulated_iommu_dev(&q->vdev);
	if (ret) {
		dev_set_drvdata(&mdev->dev, NULL);
		vfio_put_device(&q->vdev);
		return ret;
	}
	mutex_lock(&qmig_list_lock);
	list_add_tail(&q->node, &qmig_list);
	mutex_unlock(&qmig_list_lock);
	return 0;
}

static void qmig_remove(struct mdev_device *mdev)
{
	struct qmig_state *q = dev_get_drvdata(&mdev->dev);

	/* no peer can reach q->mem once it is off the list */
	mutex_lock(&qmig_list_lock);
	list_del_init(&q->node);
	mutex_unlock(&qmig_list_lock);
	vfio_unregister_group_dev(&q->vdev);	/* waits for close_device */
	vfio_put_device(&q->vdev);
}

static ssize_t qmig_show_description(struct mdev_type *mtype, char *buf)
{
	const struct qmig_type *t = container_of(mtype, struct qmig_type, type);

	return sysfs_emit(buf,
			  "qmigdev test device: BAR0 4 KiB registers, BAR2 64 KiB memory; migration flags 0x%x%s%s%s\n",
			  t->flags,
			  t->flags & VFIO_MIGRATION_STOP_COPY ? " STOP_COPY" : "",
			  t->flags & VFIO_MIGRATION_P2P ? " P2P" : "",
			  t->flags & VFIO_MIGRATION_PRE_COPY ? " PRE_COPY" : "");
}

static struct mdev_driver qmig_driver = {
	.device_api = VFIO_DEVICE_API_PCI_STRING,
	.driver = {
		.name = QMIG_NAME,
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
		.dev_groups = qmig_dev_groups,
	},
	.probe = qmig_probe,
	.remove = qmig_remove,
	.show_description = qmig_show_description,
};

static void qmig_parent_release(struct device *dev)
{
}

static int __init qmig_init(void)
{
	int ret;

	if (!max_instances)
		return -EINVAL;
	qmig_driver.max_instances = max_instances;

	qmig_wq = alloc_workqueue(QMIG_NAME, WQ_UNBOUND, 0);
	if (!qmig_wq)
		return -ENOMEM;

	ret = mdev_register_driver(&qmig_driver);
	if (ret)
		goto err_wq;

	qmig_class = class_create(QMIG_NAME);
	if (IS_ERR(qmig_class)) {
		ret = PTR_ERR(qmig_class);
		goto err_driver;
	}

	qmig_parent_dev.class = qmig_class;
	qmig_parent_dev.release = qmig_parent_release;
	dev_set_name(&qmig_parent_dev, "%s", QMIG_NAME);
	ret = device_register(&qmig_parent_dev);
	if (ret)
		goto err_put;

	ret = mdev_register_parent(&qmig_parent, &qmig_parent_dev, &qmig_driver,
				   qmig_mdev_types, ARRAY_SIZE(qmig_mdev_types));
	if (ret)
		goto err_device;
	pr_info("loaded, %u instances max\n", max_instances);
	return 0;

err_device:
	device_unregister(&qmig_parent_dev);
	goto err_class;
err_put:
	put_device(&qmig_parent_dev);
err_class:
	class_destroy(qmig_class);
err_driver:
	mdev_unregister_driver(&qmig_driver);
err_wq:
	destroy_workqueue(qmig_wq);
	return ret;
}

static void __exit qmig_exit(void)
{
	mdev_unregister_parent(&qmig_parent);	/* removes every instance */
	device_unregister(&qmig_parent_dev);
	class_destroy(qmig_class);
	mdev_unregister_driver(&qmig_driver);
	destroy_workqueue(qmig_wq);
}

module_init(qmig_init);
module_exit(qmig_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("qmp-mig migratable mediated PCI test device (VFIO migration uAPI v2)");
MODULE_VERSION(QMIG_VERSION_STR);
MODULE_AUTHOR("qmp-mig");
