// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmigpci - a vfio_pci_core variant driver for QEMU's "edu" PCI device
 * (1234:11e8) that implements the VFIO migration uAPI v2.
 *
 * Everything that is not migration (config space, BAR access and mmap,
 * interrupts, resets) is vfio_pci_core's.  This file adds:
 *
 *   - the migration FSM (STOP_COPY, and P2P and PRE_COPY switchable per
 *     function), walked one arc at a time through vfio_mig_get_next_state();
 *   - device state taken from the device itself: the edu registers that hold
 *     state are read back in STOP_COPY and written back in RESUMING, and the
 *     edu's 4 KiB internal DMA buffer is copied out and back in by the
 *     driver, which programs the edu's own DMA engine to move it between the
 *     device and a page the driver maps into the device's IOMMU domain;
 *   - a sectioned, checksummed migration stream;
 *   - counters, an arc log and fault knobs in sysfs, mirroring qmigdev.
 *
 * See README.md next to this file.
 *
 * The edu (QEMU hw/misc/edu.c), as far as this driver is concerned:
 *   0x00 ID          RO  0x010000ed
 *   0x04 LIVENESS    RW  reads back the complement of the last write
 *   0x08 FACT        RW  a write starts computing val! (32-bit, wrapping) in
 *                        a thread; ignored while COMPUTING
 *   0x20 STATUS      RW  bit0 COMPUTING (RO), bit7 IRQFACT (raise FACT_IRQ
 *                        when a computation ends)
 *   0x24 IRQ_STATUS  RO  pending interrupt bits (FACT 0x1, DMA 0x100)
 *   0x60 IRQ_RAISE   WO  ORs bits into IRQ_STATUS and signals the interrupt
 *   0x64 IRQ_ACK     WO  clears bits of IRQ_STATUS
 *   0x80 DMA_SRC, 0x88 DMA_DST, 0x90 DMA_CNT   RW 64, ignored while RUN
 *   0x98 DMA_CMD     RW  bit0 RUN, bit1 direction (1: buffer -> memory),
 *                        bit2 raise DMA_IRQ on completion.  A write without
 *                        RUN is ignored; a write with RUN starts a transfer
 *                        that completes 100 ms (QEMU virtual clock) later,
 *                        after which the register keeps the command less RUN.
 *   The buffer sits at device address 0x40000..0x40fff.  DMA addresses are
 *   masked with the device's dma_mask property (28 bits by default).
 *
 * Locking (outer to inner):
 *   q->state_lock        FSM state, migration files, pending device fix-ups,
 *                        faults, arc log, scratch page.  Released only
 *                        through qpci_state_unlock(), which runs a reset
 *                        that reset_done() had to defer.
 *   core->memory_lock    held for write around every access this driver
 *                        makes to the device (see qpci_hw_begin())
 *   m->lock              one migration file's buffers
 *   q->reset_lock        the deferred-reset flag
 * reset_done() is called with memory_lock held (VFIO_DEVICE_RESET) and
 * therefore only try-locks state_lock.  copy_to_user()/copy_from_user() on
 * a migration file run under m->lock only, never under state_lock.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/anon_inodes.h>
#include <linux/atomic.h>
#include <linux/crc32.h>
#include <linux/delay.h>
#include <linux/device.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/minmax.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/random.h>
#include <linux/rwsem.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/vfio.h>
#include <linux/vfio_pci_core.h>

#ifndef writeq
#error "qmigpci needs single 64-bit MMIO accesses (readq/writeq)"
#endif

#define QPCI_NAME		"qmigpci"
#define QPCI_VERSION_STR	"0.1"

/* ---- the edu device ---- */
#define EDU_VENDOR		0x1234
#define EDU_DEVICE		0x11e8

#define EDU_REG_ID		0x00
#define EDU_REG_LIVENESS	0x04
#define EDU_REG_FACT		0x08
#define EDU_REG_STATUS		0x20
#define EDU_REG_IRQ_STATUS	0x24
#define EDU_REG_IRQ_RAISE	0x60
#define EDU_REG_IRQ_ACK		0x64
#define EDU_REG_DMA_SRC		0x80
#define EDU_REG_DMA_DST		0x88
#define EDU_REG_DMA_CNT		0x90
#define EDU_REG_DMA_CMD		0x98
#define EDU_REGS_END		0xa0

#define EDU_ID_MAGIC_MASK	0xffU
#define EDU_ID_MAGIC		0xedU
#define EDU_STATUS_COMPUTING	0x01U
#define EDU_STATUS_IRQFACT	0x80U
#define EDU_DMA_RUN		0x1ULL
#define EDU_DMA_TO_MEM		0x2ULL	/* buffer -> memory ("to PCI") */
#define EDU_DMA_IRQ		0x4ULL
#define EDU_BUF_ADDR		0x40000ULL
#define EDU_BUF_SIZE		4096U
/* 34! is divisible by 2^32: every argument >= 34 leaves FACT at 0 */
#define EDU_FACT_ZERO_ARG	34

static_assert(EDU_BUF_SIZE <= PAGE_SIZE);

/* ---- migration stream ---- */
#define QPCI_SEC_MAGIC		0x49435051	/* "QPCI" */
#define QPCI_STREAM_VERSION	1
#define QPCI_SEC_HEADER		1
#define QPCI_SEC_DMABUF		2
#define QPCI_SEC_REGS		3
#define QPCI_SEC_END		4
#define QPCI_HDR_PRECOPY	BIT(0)
#define QPCI_HDR_HAS_DMABUF	BIT(1)
#define QPCI_HDR_FLAGS		(QPCI_HDR_PRECOPY | QPCI_HDR_HAS_DMABUF)

struct qpci_sec {
	__le32 magic;
	__le16 type;
	__le16 flags;		/* 0 */
	__le32 len;		/* payload bytes that follow */
	__le32 crc;		/* CRC-32 (zlib) of the payload */
} __packed;

struct qpci_stream_hdr {
	__le16 version;
	__le16 flags;
	__le16 vendor;
	__le16 device;
	u8 revision;
	u8 pad[3];		/* 0 */
	__le32 regs_size;	/* payload size of REGS */
	__le64 bar0_size;
	__le32 dmabuf_size;	/* payload size of DMABUF */
	__le32 reserved;	/* 0 */
} __packed;

struct qpci_regs_img {
	__le32 id;
	__le32 liveness;
	__le32 fact;
	__le32 status;
	__le32 irq_status;
	__le32 reserved;	/* 0 */
	__le64 dma_src;
	__le64 dma_dst;
	__le64 dma_cnt;
	__le64 dma_cmd;
} __packed;

struct qpci_stream_end {
	__le64 total_len;	/* bytes of the whole stream, END included */
	__le32 nsec;		/* sections before END */
	__le32 stream_crc;	/* CRC-32 (zlib) of every byte before END */
} __packed;

#define QPCI_SEC_SIZE(pay)	(sizeof(struct qpci_sec) + (pay))
#define QPCI_HDR_PAY		sizeof(struct qpci_stream_hdr)
#define QPCI_REGS_PAY		sizeof(struct qpci_regs_img)
#define QPCI_BUF_PAY		EDU_BUF_SIZE
#define QPCI_END_PAY		sizeof(struct qpci_stream_end)
#define QPCI_MAX_PAY		QPCI_BUF_PAY
#define QPCI_STREAM_SIZE(buf)	(QPCI_SEC_SIZE(QPCI_HDR_PAY) +			\
				 ((buf) ? QPCI_SEC_SIZE(QPCI_BUF_PAY) : 0) +	\
				 QPCI_SEC_SIZE(QPCI_REGS_PAY) +			\
				 QPCI_SEC_SIZE(QPCI_END_PAY))

static_assert(sizeof(struct qpci_sec) == 16);
static_assert(QPCI_HDR_PAY == 32);
static_assert(QPCI_REGS_PAY == 56);
static_assert(QPCI_END_PAY == 16);
static_assert(QPCI_HDR_PAY <= QPCI_MAX_PAY && QPCI_REGS_PAY <= QPCI_MAX_PAY);

/* The registers that hold edu state, in CPU byte order. */
struct qpci_regs {
	u32 id;
	u32 liveness;
	u32 fact;
	u32 status;
	u32 irq_status;
	u64 dma_src;
	u64 dma_dst;
	u64 dma_cnt;
	u64 dma_cmd;
};

/* ---- host-side statistics (sysfs; not migrated, not cleared by resets) */
#define QPCI_STATS(X) \
	X(resets) X(resets_refused) \
	X(saves) X(loads) X(load_errors) X(arc_failures) \
	X(writes_while_stopped) X(p2p_while_quiesced) \
	X(quiesce_waits) X(quiesce_timeouts) \
	X(dma_ops) X(dma_errors)

struct qpci_stats {
#define X(n) atomic64_t n;
	QPCI_STATS(X)
#undef X
};

enum { QPCI_FAIL_STAY, QPCI_FAIL_ERROR };
enum { QPCI_LIE_PRECOPY_OFF, QPCI_LIE_PRECOPY_ZERO, QPCI_LIE_PRECOPY_STUCK };
enum { QPCI_REFUSE_OFF, QPCI_REFUSE_FAIL, QPCI_REFUSE_IGNORE };
enum { QPCI_IOVA_AUTO, QPCI_IOVA_OFF, QPCI_IOVA_FIXED };

struct qpci_faults {
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

#define QPCI_ARC_LOG		64
#define QPCI_DELAY_MAX_MS	60000

struct qpci_arc {
	u8 cur;
	u8 next;
	bool ok;
};

struct qpci_migf;

struct qpci_dev {
	struct vfio_pci_core_device core;	/* first: vfio_alloc_device() */

	struct mutex state_lock;		/* see "Locking" at the top */
	spinlock_t reset_lock;			/* protects deferred_reset */
	bool deferred_reset;			/* under reset_lock */
	bool closing;				/* in close_device (READ_ONCE) */
	enum vfio_device_mig_state state;	/* WRITE_ONCE under state_lock */
	u32 want_flags;				/* migration flags for the next open */
	struct qpci_migf *saving_migf;
	struct qpci_migf *resuming_migf;

	/*
	 * Register values the device still owes: restoring them raises an
	 * interrupt, which STOP forbids, so they are applied on the next arc
	 * from STOP into a running state.  A save in between streams them.
	 */
	bool fix_cmd_pending;
	bool fix_irq_pending;
	u64 fix_cmd;
	u32 fix_irq;

	struct page *scratch;			/* the driver's DMA page */
	int iova_mode;
	u64 iova_fixed;
	u64 scratch_iova;			/* last IOVA the page was mapped at */

	struct qpci_faults f;
	struct qpci_arc arcs[QPCI_ARC_LOG];
	unsigned int arc_head;
	unsigned int arc_count;

	struct qpci_regs last_save, last_load;
	bool last_save_valid, last_load_valid;
	bool last_save_buf, last_load_buf;
	u32 last_save_crc, last_load_crc;

	struct qpci_stats stats;
};

struct qpci_migf {
	struct file *filp;
	struct qpci_dev *q;		/* holds a reference on the vfio device */
	struct mutex lock;
	bool disabled;

	/* saving: buf[0..len) produced, buf[0..off) read */
	u8 *buf;
	size_t cap, len, off;
	size_t initial_end;		/* end of the PRE_COPY initial data */
	u32 crc;			/* running crc32_le state, seeded ~0 */
	u32 nsec;
	bool has_dmabuf;
	bool precopy;
	bool final;			/* STOP_COPY data appended */

	/* resuming */
	u8 sec[sizeof(struct qpci_sec)];
	u32 sec_have;
	u8 *payload;			/* QPCI_MAX_PAY */
	u32 pay_len, pay_have;
	u16 sec_type;
	bool got_hdr, got_buf, got_regs, got_end, broken;
	u32 stream_flags;
	u64 received;
	u8 *stage_buf;			/* EDU_BUF_SIZE */
	struct qpci_regs stage_regs;
};

/* ---- module parameters ---- */

static bool default_p2p = true;
module_param(default_p2p, bool, 0644);
MODULE_PARM_DESC(default_p2p, "Initial enable_p2p of a newly bound function (default 1)");

static bool default_precopy = true;
module_param(default_precopy, bool, 0644);
MODULE_PARM_DESC(default_precopy, "Initial enable_precopy of a newly bound function (default 1)");

static unsigned int quiesce_timeout_ms = 10000;
module_param(quiesce_timeout_ms, uint, 0644);
MODULE_PARM_DESC(quiesce_timeout_ms,
		 "How long an arc into a stopped or P2P state waits for the guest's DMA / factorial to finish (default 10000)");

static unsigned int dma_timeout_ms = 5000;
module_param(dma_timeout_ms, uint, 0644);
MODULE_PARM_DESC(dma_timeout_ms,
		 "How long the driver waits for one of its own edu DMA transfers or factorial restores (default 5000)");

static unsigned int edu_dma_bits = 28;
module_param(edu_dma_bits, uint, 0644);
MODULE_PARM_DESC(edu_dma_bits,
		 "Address bits the edu's DMA engine reaches (QEMU's dma_mask property; default 28)");

static u32 qpci_fact_tab[EDU_FACT_ZERO_ARG + 1];

static const struct vfio_device_ops qpci_dev_ops;
static const struct file_operations qpci_save_fops;
static const struct file_operations qpci_resume_fops;

static const char * const qpci_state_names[] = {
	[VFIO_DEVICE_STATE_ERROR] = "ERROR",
	[VFIO_DEVICE_STATE_STOP] = "STOP",
	[VFIO_DEVICE_STATE_RUNNING] = "RUNNING",
	[VFIO_DEVICE_STATE_STOP_COPY] = "STOP_COPY",
	[VFIO_DEVICE_STATE_RESUMING] = "RESUMING",
	[VFIO_DEVICE_STATE_RUNNING_P2P] = "RUNNING_P2P",
	[VFIO_DEVICE_STATE_PRE_COPY] = "PRE_COPY",
	[VFIO_DEVICE_STATE_PRE_COPY_P2P] = "PRE_COPY_P2P",
};

/* ---- small helpers ---- */

static struct qpci_dev *qpci_from_vdev(struct vfio_device *vdev)
{
	return container_of(vdev, struct qpci_dev, core.vdev);
}

static struct qpci_dev *qpci_from_dev(struct device *dev)
{
	struct vfio_pci_core_device *core = dev_get_drvdata(dev);

	return container_of(core, struct qpci_dev, core);
}

static const char *qpci_state_name(unsigned int s)
{
	if (s < ARRAY_SIZE(qpci_state_names) && qpci_state_names[s])
		return qpci_state_names[s];
	return "?";
}

static int qpci_state_from_name(const char *s)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(qpci_state_names); i++)
		if (qpci_state_names[i] && !strcasecmp(s, qpci_state_names[i]))
			return i;
	return -EINVAL;
}

/* The flags a state needs, as vfio_mig_get_next_state() sees them. */
static bool qpci_state_supported(enum vfio_device_mig_state s, u32 flags)
{
	u32 need = VFIO_MIGRATION_STOP_COPY;

	switch (s) {
	case VFIO_DEVICE_STATE_ERROR:
		return true;
	case VFIO_DEVICE_STATE_STOP:
	case VFIO_DEVICE_STATE_RUNNING:
	case VFIO_DEVICE_STATE_STOP_COPY:
	case VFIO_DEVICE_STATE_RESUMING:
		break;
	case VFIO_DEVICE_STATE_RUNNING_P2P:
		need |= VFIO_MIGRATION_P2P;
		break;
	case VFIO_DEVICE_STATE_PRE_COPY:
		need |= VFIO_MIGRATION_PRE_COPY;
		break;
	case VFIO_DEVICE_STATE_PRE_COPY_P2P:
		need |= VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
		break;
	default:
		return false;
	}
	return (flags & need) == need;
}

static bool qpci_st_precopy(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_PRE_COPY ||
	       s == VFIO_DEVICE_STATE_PRE_COPY_P2P;
}

static bool qpci_st_running(enum vfio_device_mig_state s)
{
	return s == VFIO_DEVICE_STATE_RUNNING ||
	       s == VFIO_DEVICE_STATE_RUNNING_P2P || qpci_st_precopy(s);
}

static void qpci_set_mstate(struct qpci_dev *q, enum vfio_device_mig_state s)
{
	lockdep_assert_held(&q->state_lock);
	WRITE_ONCE(q->state, s);
}

static void qpci_log_arc(struct qpci_dev *q, enum vfio_device_mig_state cur,
			 enum vfio_device_mig_state next, bool ok)
{
	struct qpci_arc *a = &q->arcs[q->arc_head];

	a->cur = cur;
	a->next = next;
	a->ok = ok;
	q->arc_head = (q->arc_head + 1) % QPCI_ARC_LOG;
	if (q->arc_count < QPCI_ARC_LOG)
		q->arc_count++;
	if (!ok)
		atomic64_inc(&q->stats.arc_failures);
}

static u32 qpci_crc(u32 crc, const void *p, size_t len)
{
	return crc32_le(crc, p, len);
}

/* zlib-compatible CRC-32 of one buffer */
static u32 qpci_crc_buf(const void *p, size_t len)
{
	return ~crc32_le(~0U, p, len);
}

/* An argument whose factorial (as the edu computes it) is @val, or -1. */
static int qpci_fact_arg(u32 val)
{
	int n;

	for (n = 0; n <= EDU_FACT_ZERO_ARG; n++)
		if (qpci_fact_tab[n] == val)
			return n;
	return -1;
}

static void qpci_fact_init(void)
{
	u32 v = 1;
	int n;

	qpci_fact_tab[0] = 1;
	for (n = 1; n <= EDU_FACT_ZERO_ARG; n++) {
		v *= (u32)n;
		qpci_fact_tab[n] = v;
	}
}

/* ---- migration files ---- */

static void qpci_migf_free(struct qpci_migf *m)
{
	kvfree(m->buf);
	kfree(m->payload);
	kfree(m->stage_buf);
	mutex_destroy(&m->lock);
	kfree(m);
}

static int qpci_migf_release(struct inode *inode, struct file *filp)
{
	struct qpci_migf *m = filp->private_data;
	struct qpci_dev *q = m->q;

	qpci_migf_free(m);
	vfio_put_device(&q->core.vdev);	/* may be the last reference */
	return 0;
}

static struct qpci_migf *qpci_migf_new(struct qpci_dev *q, bool saving)
{
	struct qpci_migf *m;
	struct file *filp;

	m = kzalloc(sizeof(*m), GFP_KERNEL_ACCOUNT);
	if (!m)
		return ERR_PTR(-ENOMEM);
	mutex_init(&m->lock);
	m->q = q;
	m->crc = ~0U;
	if (saving) {
		m->cap = QPCI_STREAM_SIZE(true);
		m->buf = kvzalloc(m->cap, GFP_KERNEL_ACCOUNT);
		if (!m->buf)
			goto nomem;
	} else {
		m->payload = kzalloc(QPCI_MAX_PAY, GFP_KERNEL_ACCOUNT);
		m->stage_buf = kzalloc(EDU_BUF_SIZE, GFP_KERNEL_ACCOUNT);
		if (!m->payload || !m->stage_buf)
			goto nomem;
	}

	/* the file keeps the vfio device alive; dropped in release */
	get_device(&q->core.vdev.device);
	filp = anon_inode_getfile("qmigpci_mig",
				  saving ? &qpci_save_fops : &qpci_resume_fops,
				  m, saving ? O_RDONLY : O_WRONLY);
	if (IS_ERR(filp)) {
		vfio_put_device(&q->core.vdev);
		qpci_migf_free(m);
		return ERR_CAST(filp);
	}
	stream_open(filp->f_inode, filp);
	m->filp = filp;
	return m;

nomem:
	qpci_migf_free(m);
	return ERR_PTR(-ENOMEM);
}

/*
 * No m->lock here: this runs from the reset path too, possibly with
 * memory_lock held, while a reader may hold m->lock and fault on a BAR
 * mmap.  The buffers live until the file is released, so a read or write
 * that began before the flag was set simply completes.
 */
static void qpci_migf_disable(struct qpci_migf *m)
{
	WRITE_ONCE(m->disabled, true);
}

static void qpci_drop_files(struct qpci_dev *q)
{
	lockdep_assert_held(&q->state_lock);
	if (q->saving_migf) {
		qpci_migf_disable(q->saving_migf);
		fput(q->saving_migf->filp);
		q->saving_migf = NULL;
	}
	if (q->resuming_migf) {
		qpci_migf_disable(q->resuming_migf);
		fput(q->resuming_migf->filp);
		q->resuming_migf = NULL;
	}
}

/* ---- state lock and deferred reset ---- */

/* What a function reset means for migration: back to RUNNING, no session. */
static void qpci_mig_reset(struct qpci_dev *q)
{
	lockdep_assert_held(&q->state_lock);
	atomic64_inc(&q->stats.resets);
	/*
	 * The stale_state_on_close fault: the resets the core does while the
	 * device closes are forgotten too (a driver that clears its migration
	 * state only on VFIO_DEVICE_RESET), or they would hide the fault.
	 */
	if (READ_ONCE(q->closing) && q->f.stale_state_on_close)
		return;
	qpci_drop_files(q);
	q->fix_cmd_pending = false;
	q->fix_irq_pending = false;
	qpci_set_mstate(q, VFIO_DEVICE_STATE_RUNNING);
}

/*
 * Every release of state_lock goes through here: a reset_done() that found
 * the lock taken left its work to whoever held it.
 */
static void qpci_state_unlock(struct qpci_dev *q)
{
again:
	spin_lock(&q->reset_lock);
	if (q->deferred_reset) {
		q->deferred_reset = false;
		spin_unlock(&q->reset_lock);
		qpci_mig_reset(q);
		goto again;
	}
	mutex_unlock(&q->state_lock);
	spin_unlock(&q->reset_lock);
}

/* ---- device access ---- */

#define QPCI_CMD_NEEDED		(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)

struct qpci_hw {
	void __iomem *bar;
	u16 cmd;		/* COMMAND as found */
	u32 id;
};

static void qpci_hw_end(struct qpci_dev *q, struct qpci_hw *hw)
{
	struct vfio_pci_core_device *core = &q->core;

	if ((hw->cmd & QPCI_CMD_NEEDED) != QPCI_CMD_NEEDED)
		pci_write_config_word(core->pdev, PCI_COMMAND, hw->cmd);
	up_write(&core->memory_lock);
}

/*
 * Open a window in which the driver itself talks to the device.  The user
 * may have memory decode or bus mastering off (a destination that has not
 * loaded its config space yet has both off), so both are switched on for
 * the window and COMMAND is put back afterwards.  memory_lock is held for
 * write throughout, which keeps the user's BAR accesses, BAR faults and
 * config writes out until the window closes.
 */
static int qpci_hw_begin(struct qpci_dev *q, struct qpci_hw *hw)
{
	struct vfio_pci_core_device *core = &q->core;
	struct pci_dev *pdev = core->pdev;
	u16 cmd;

	lockdep_assert_held(&q->state_lock);
	hw->bar = core->barmap[0];
	if (!hw->bar)
		return -ENODEV;
	down_write(&core->memory_lock);
	if (core->pm_runtime_engaged || pdev->current_state != PCI_D0) {
		up_write(&core->memory_lock);
		return -EBUSY;
	}
	if (pci_read_config_word(pdev, PCI_COMMAND, &cmd) || cmd == 0xffff) {
		up_write(&core->memory_lock);
		return -EIO;
	}
	hw->cmd = cmd;
	if ((cmd & QPCI_CMD_NEEDED) != QPCI_CMD_NEEDED)
		pci_write_config_word(pdev, PCI_COMMAND, cmd | QPCI_CMD_NEEDED);
	hw->id = readl(hw->bar + EDU_REG_ID);
	if ((hw->id & EDU_ID_MAGIC_MASK) != EDU_ID_MAGIC) {
		qpci_hw_end(q, hw);
		return -EIO;
	}
	return 0;
}

static bool qpci_hw_busy(struct qpci_hw *hw, bool dma_only)
{
	if (readq(hw->bar + EDU_REG_DMA_CMD) & EDU_DMA_RUN)
		return true;
	return !dma_only &&
	       (readl(hw->bar + EDU_REG_STATUS) & EDU_STATUS_COMPUTING);
}

/* Wait until no DMA (and, unless @dma_only, no factorial) is in progress. */
static int qpci_hw_wait_idle(struct qpci_hw *hw, bool dma_only,
			     unsigned int timeout_ms, bool *was_busy)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	bool busy = false;

	while (qpci_hw_busy(hw, dma_only)) {
		busy = true;
		if (time_after(jiffies, deadline)) {
			if (was_busy)
				*was_busy = true;
			return -ETIMEDOUT;
		}
		usleep_range(500, 1000);
	}
	if (was_busy)
		*was_busy = busy;
	return 0;
}

static void qpci_hw_read_regs(struct qpci_hw *hw, struct qpci_regs *r)
{
	r->id = hw->id;
	r->liveness = readl(hw->bar + EDU_REG_LIVENESS);
	r->fact = readl(hw->bar + EDU_REG_FACT);
	r->status = readl(hw->bar + EDU_REG_STATUS);
	r->irq_status = readl(hw->bar + EDU_REG_IRQ_STATUS);
	r->dma_src = readq(hw->bar + EDU_REG_DMA_SRC);
	r->dma_dst = readq(hw->bar + EDU_REG_DMA_DST);
	r->dma_cnt = readq(hw->bar + EDU_REG_DMA_CNT);
	r->dma_cmd = readq(hw->bar + EDU_REG_DMA_CMD);
}

static int qpci_hw_set_dma_regs(struct qpci_hw *hw, u64 src, u64 dst, u64 cnt)
{
	writeq(src, hw->bar + EDU_REG_DMA_SRC);
	writeq(dst, hw->bar + EDU_REG_DMA_DST);
	writeq(cnt, hw->bar + EDU_REG_DMA_CNT);
	/* the edu ignores these writes while a transfer runs */
	if (readq(hw->bar + EDU_REG_DMA_SRC) != src ||
	    readq(hw->bar + EDU_REG_DMA_DST) != dst ||
	    readq(hw->bar + EDU_REG_DMA_CNT) != cnt)
		return -EBUSY;
	return 0;
}

/* One transfer of the edu's engine, started and waited for by the driver. */
static int qpci_hw_dma(struct qpci_dev *q, struct qpci_hw *hw, u64 src,
		       u64 dst, u64 cnt, u64 cmd)
{
	int ret;

	ret = qpci_hw_set_dma_regs(hw, src, dst, cnt);
	if (!ret) {
		writeq(cmd | EDU_DMA_RUN, hw->bar + EDU_REG_DMA_CMD);
		ret = qpci_hw_wait_idle(hw, true, READ_ONCE(dma_timeout_ms), NULL);
	}
	if (ret)
		atomic64_inc(&q->stats.dma_errors);
	else
		atomic64_inc(&q->stats.dma_ops);
	return ret;
}

/*
 * DMA_CMD keeps the last command (less RUN) and only a command with RUN set
 * can change it.  Re-establish @cmd with a zero-length transfer (no memory
 * access; raises DMA_IRQ if @cmd asks for it) and put SRC/DST/CNT back.
 */
static int qpci_hw_set_cmd(struct qpci_dev *q, struct qpci_hw *hw, u64 cmd)
{
	u64 src = readq(hw->bar + EDU_REG_DMA_SRC);
	u64 dst = readq(hw->bar + EDU_REG_DMA_DST);
	u64 cnt = readq(hw->bar + EDU_REG_DMA_CNT);
	int ret;

	ret = qpci_hw_dma(q, hw, EDU_BUF_ADDR, EDU_BUF_ADDR, 0, cmd);
	if (ret)
		return ret;
	ret = qpci_hw_set_dma_regs(hw, src, dst, cnt);
	if (ret)
		return ret;
	return readq(hw->bar + EDU_REG_DMA_CMD) == cmd ? 0 : -EIO;
}

/* Make IRQ_STATUS equal @want (raising signals the interrupt). */
static int qpci_hw_set_irq(struct qpci_hw *hw, u32 want)
{
	u32 cur = readl(hw->bar + EDU_REG_IRQ_STATUS);

	if (want & ~cur)
		writel(want & ~cur, hw->bar + EDU_REG_IRQ_RAISE);
	if (cur & ~want)
		writel(cur & ~want, hw->bar + EDU_REG_IRQ_ACK);
	return readl(hw->bar + EDU_REG_IRQ_STATUS) == want ? 0 : -EIO;
}

/* Make FACT equal @want by computing a factorial that yields it. */
static int qpci_hw_set_fact(struct qpci_hw *hw, u32 want)
{
	int n, ret;

	if (readl(hw->bar + EDU_REG_FACT) == want)
		return 0;
	n = qpci_fact_arg(want);
	if (n < 0)
		return -EINVAL;
	writel(n, hw->bar + EDU_REG_FACT);
	ret = qpci_hw_wait_idle(hw, false, READ_ONCE(dma_timeout_ms), NULL);
	if (ret)
		return ret;
	return readl(hw->bar + EDU_REG_FACT) == want ? 0 : -EIO;
}

/*
 * Put SRC/DST/CNT and then CMD back.  A CMD with the IRQ bit cannot be
 * re-established without raising DMA_IRQ, which STOP forbids, so it becomes
 * a pending fix-up (see qpci_apply_fixups()).
 */
static int qpci_hw_put_dma_regs(struct qpci_dev *q, struct qpci_hw *hw,
				const struct qpci_regs *r)
{
	int ret;

	ret = qpci_hw_set_dma_regs(hw, r->dma_src, r->dma_dst, r->dma_cnt);
	if (ret)
		return ret;
	if (readq(hw->bar + EDU_REG_DMA_CMD) == r->dma_cmd) {
		q->fix_cmd_pending = false;
		return 0;
	}
	if (r->dma_cmd & EDU_DMA_IRQ) {
		q->fix_cmd_pending = true;
		q->fix_cmd = r->dma_cmd;
		return 0;
	}
	ret = qpci_hw_set_cmd(q, hw, r->dma_cmd);
	if (!ret)
		q->fix_cmd_pending = false;
	return ret;
}

/* ---- the scratch page in the device's IOMMU domain ---- */

static u64 qpci_dma_limit(void)
{
	unsigned int bits = READ_ONCE(edu_dma_bits);

	if (bits < 13)
		bits = 13;	/* at least one page above page 0 */
	return bits >= 64 ? U64_MAX : BIT_ULL(bits) - 1;
}

static bool qpci_iova_free(struct iommu_domain *dom, u64 iova)
{
	return !iommu_iova_to_phys(dom, iova);
}

/*
 * Map the scratch page at an IOVA the device can reach.  While a user owns
 * the device it is attached to the user's (type1) domain, so the kernel DMA
 * API cannot be used: the page goes straight into that domain, at an IOVA
 * nothing maps, and comes out again in the same arc.
 */
static int qpci_scratch_map(struct qpci_dev *q, struct iommu_domain **domp,
			    u64 *iovap)
{
	struct pci_dev *pdev = q->core.pdev;
	struct iommu_domain *dom = iommu_get_domain_for_dev(&pdev->dev);
	phys_addr_t phys = page_to_phys(q->scratch);
	int prot = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE;
	u64 lo, hi, iova;
	int ret;

	lockdep_assert_held(&q->state_lock);
	if (q->iova_mode == QPCI_IOVA_OFF)
		return -EOPNOTSUPP;
	if (!dom || dom->type != IOMMU_DOMAIN_UNMANAGED ||
	    !(dom->pgsize_bitmap & PAGE_SIZE)) {
		dev_warn_ratelimited(&pdev->dev, "no user IOMMU domain to place the scratch page in\n");
		return -EOPNOTSUPP;
	}
	lo = max_t(u64, dom->geometry.aperture_start, PAGE_SIZE);
	hi = min_t(u64, dom->geometry.aperture_end, qpci_dma_limit());
	if (hi < lo || hi - lo < PAGE_SIZE - 1)
		return -ENOSPC;

	if (q->iova_mode == QPCI_IOVA_FIXED) {
		iova = q->iova_fixed;
		if (iova < lo || iova > hi || hi - iova < PAGE_SIZE - 1)
			return -ERANGE;
		if (!qpci_iova_free(dom, iova))
			return -EADDRINUSE;
		ret = iommu_map(dom, iova, phys, PAGE_SIZE, prot, GFP_KERNEL);
		if (ret)
			return ret;
		goto found;
	}

	/* auto: the highest unmapped page the device can reach */
	iova = round_down(hi - (PAGE_SIZE - 1), PAGE_SIZE);
	for (;;) {
		if (qpci_iova_free(dom, iova)) {
			ret = iommu_map(dom, iova, phys, PAGE_SIZE, prot,
					GFP_KERNEL);
			if (ret)
				return ret;
			goto found;
		}
		if (iova < lo + PAGE_SIZE)
			return -ENOSPC;
		iova -= PAGE_SIZE;
	}

found:
	q->scratch_iova = iova;
	*domp = dom;
	*iovap = iova;
	return 0;
}

static void qpci_scratch_unmap(struct qpci_dev *q, struct iommu_domain *dom,
			       u64 iova)
{
	if (iommu_unmap(dom, iova, PAGE_SIZE) != PAGE_SIZE)
		pci_warn(q->core.pdev, "scratch page at 0x%llx not unmapped\n",
			 iova);
}

static u64 qpci_fill_canary(void *page)
{
	u64 *w = page;
	u64 canary;
	unsigned int i;

	get_random_bytes(&canary, sizeof(canary));
	for (i = 0; i < EDU_BUF_SIZE / sizeof(*w); i++)
		w[i] = canary;
	return canary;
}

static bool qpci_is_canary(const void *page, u64 canary)
{
	const u64 *w = page;
	unsigned int i;

	for (i = 0; i < EDU_BUF_SIZE / sizeof(*w); i++)
		if (w[i] != canary)
			return false;
	return true;
}

/* ---- save / load against the device ---- */

/*
 * STOP_COPY: wait for the device to be idle, read its registers and, if
 * @want_buf, its DMA buffer into the scratch page.  *@fatal is set once the
 * device's registers have been touched: a failure after that point leaves
 * the device in no valid state.
 */
static int qpci_capture(struct qpci_dev *q, struct qpci_regs *r,
			bool want_buf, bool from_stop, bool *fatal)
{
	void *page = page_address(q->scratch);
	struct iommu_domain *dom = NULL;
	struct qpci_hw hw;
	u64 iova = 0, canary;
	bool busy;
	int ret, ret2;

	*fatal = false;
	ret = qpci_hw_begin(q, &hw);
	if (ret)
		return ret;
	ret = qpci_hw_wait_idle(&hw, false, READ_ONCE(quiesce_timeout_ms), &busy);
	if (busy)
		atomic64_inc(from_stop ? &q->stats.writes_while_stopped :
					 &q->stats.quiesce_waits);
	if (ret) {
		atomic64_inc(&q->stats.quiesce_timeouts);
		goto out;
	}
	qpci_hw_read_regs(&hw, r);
	if (q->fix_cmd_pending)
		r->dma_cmd = q->fix_cmd;
	if (q->fix_irq_pending)
		r->irq_status = q->fix_irq;
	if (!want_buf)
		goto out;

	ret = qpci_scratch_map(q, &dom, &iova);
	if (ret)
		goto out;
	canary = qpci_fill_canary(page);
	*fatal = true;
	ret = qpci_hw_dma(q, &hw, EDU_BUF_ADDR, iova, EDU_BUF_SIZE,
			  EDU_DMA_TO_MEM);
	qpci_scratch_unmap(q, dom, iova);
	if (!ret && qpci_is_canary(page, canary)) {
		atomic64_inc(&q->stats.dma_errors);
		ret = -EIO;	/* the transfer did not land in the page */
	}
	/* put back what the transfer overwrote, even after a failure */
	ret2 = qpci_hw_put_dma_regs(q, &hw, r);
	if (!ret)
		ret = ret2;
	if (!ret)
		*fatal = false;
out:
	qpci_hw_end(q, &hw);
	return ret;
}

/*
 * RESUMING -> STOP: write a validated state into the device.  Nothing is
 * written before the device is idle and its ID matches; *@fatal as in
 * qpci_capture().
 */
static int qpci_apply(struct qpci_dev *q, const struct qpci_regs *r,
		      const u8 *buf, bool *fatal)
{
	void *page = page_address(q->scratch);
	struct iommu_domain *dom = NULL;
	struct qpci_hw hw;
	u64 iova = 0;
	bool busy;
	int ret;

	*fatal = false;
	ret = qpci_hw_begin(q, &hw);
	if (ret)
		return ret;
	ret = qpci_hw_wait_idle(&hw, false, READ_ONCE(quiesce_timeout_ms), &busy);
	if (busy)
		atomic64_inc(&q->stats.writes_while_stopped);
	if (ret) {
		atomic64_inc(&q->stats.quiesce_timeouts);
		goto out;
	}
	if (hw.id != r->id) {
		ret = -EINVAL;
		goto out;
	}
	if (buf) {
		ret = qpci_scratch_map(q, &dom, &iova);
		if (ret)
			goto out;
	}

	*fatal = true;
	/* IRQFACT off, so that restoring FACT raises nothing */
	writel(0, hw.bar + EDU_REG_STATUS);
	if (buf) {
		memcpy(page, buf, EDU_BUF_SIZE);
		ret = qpci_hw_dma(q, &hw, iova, EDU_BUF_ADDR, EDU_BUF_SIZE, 0);
		if (!ret) {
			/* read it back to prove it arrived */
			qpci_fill_canary(page);
			ret = qpci_hw_dma(q, &hw, EDU_BUF_ADDR, iova,
					  EDU_BUF_SIZE, EDU_DMA_TO_MEM);
		}
		qpci_scratch_unmap(q, dom, iova);
		if (!ret && memcmp(page, buf, EDU_BUF_SIZE)) {
			atomic64_inc(&q->stats.dma_errors);
			ret = -EIO;
		}
		if (ret)
			goto out;
	}
	ret = qpci_hw_set_fact(&hw, r->fact);
	if (ret)
		goto out;
	writel(~r->liveness, hw.bar + EDU_REG_LIVENESS);
	if (readl(hw.bar + EDU_REG_LIVENESS) != r->liveness) {
		ret = -EIO;
		goto out;
	}
	writel(r->status & EDU_STATUS_IRQFACT, hw.bar + EDU_REG_STATUS);
	if ((readl(hw.bar + EDU_REG_STATUS) & EDU_STATUS_IRQFACT) !=
	    (r->status & EDU_STATUS_IRQFACT)) {
		ret = -EIO;
		goto out;
	}
	/* IRQ_STATUS is owed until the device may signal again */
	q->fix_irq_pending = false;
	q->fix_cmd_pending = false;
	if (readl(hw.bar + EDU_REG_IRQ_STATUS) != r->irq_status) {
		q->fix_irq_pending = true;
		q->fix_irq = r->irq_status;
	}
	ret = qpci_hw_put_dma_regs(q, &hw, r);
	if (!ret)
		*fatal = false;
out:
	qpci_hw_end(q, &hw);
	return ret;
}

/* STOP -> RUNNING_P2P / RUNNING: pay what the device still owes. */
static int qpci_apply_fixups(struct qpci_dev *q, bool *fatal)
{
	struct qpci_hw hw;
	u32 irq;
	int ret;

	*fatal = false;
	if (!q->fix_cmd_pending && !q->fix_irq_pending)
		return 0;
	ret = qpci_hw_begin(q, &hw);
	if (ret)
		return ret;
	ret = qpci_hw_wait_idle(&hw, false, READ_ONCE(quiesce_timeout_ms), NULL);
	if (ret) {
		atomic64_inc(&q->stats.quiesce_timeouts);
		goto out;
	}
	irq = q->fix_irq_pending ? q->fix_irq :
	      readl(hw.bar + EDU_REG_IRQ_STATUS);
	*fatal = true;
	if (q->fix_cmd_pending) {
		ret = qpci_hw_set_cmd(q, &hw, q->fix_cmd);
		if (ret)
			goto out;
		q->fix_cmd_pending = false;
	}
	ret = qpci_hw_set_irq(&hw, irq);
	if (ret)
		goto out;
	q->fix_irq_pending = false;
	*fatal = false;
out:
	qpci_hw_end(q, &hw);
	return ret;
}

/*
 * Arc into a P2P-quiesced (@dma_only) or stopped state: the edu cannot tell
 * P2P from other DMA and has no pause control, so the arc waits for the
 * transfer (and, for STOP, the factorial) in flight to finish.  With the
 * matching fault knob set it does not wait, and only counts what it left
 * running.  A device that ignores the quiesce keeps working: with none of
 * the guest's transfers in flight, it runs the last one again (the same
 * bytes to the same place), so that the fault shows whenever the guest has
 * used the engine, not only when a transfer happens to be in flight at the
 * arc (a fast guest's pre-copy ends right after the initial save, which
 * drained the engine; and the stop comes at any point of the guest's loop).
 */
static int qpci_quiesce(struct qpci_dev *q, bool dma_only, bool skip)
{
	struct qpci_hw hw;
	bool busy;
	int ret;

	ret = qpci_hw_begin(q, &hw);
	if (ret)
		return ret;
	if (skip) {
		if (!qpci_hw_busy(&hw, true) && readq(hw.bar + EDU_REG_DMA_CNT))
			writeq(readq(hw.bar + EDU_REG_DMA_CMD) | EDU_DMA_RUN,
			       hw.bar + EDU_REG_DMA_CMD);
		if (qpci_hw_busy(&hw, dma_only))
			atomic64_inc(dma_only ? &q->stats.p2p_while_quiesced :
						&q->stats.writes_while_stopped);
		goto out;
	}
	ret = qpci_hw_wait_idle(&hw, dma_only, READ_ONCE(quiesce_timeout_ms),
				&busy);
	if (busy)
		atomic64_inc(&q->stats.quiesce_waits);
	if (ret)
		atomic64_inc(&q->stats.quiesce_timeouts);
out:
	qpci_hw_end(q, &hw);
	return ret;
}

/* ---- saving ---- */

static int qpci_put_sec(struct qpci_migf *m, u16 type, const void *pay,
			u32 len)
{
	struct qpci_sec s;
	size_t total = QPCI_SEC_SIZE(len);
	u8 *dst;

	lockdep_assert_held(&m->lock);
	if (WARN_ON_ONCE(m->len + total > m->cap))
		return -ENOSPC;
	s.magic = cpu_to_le32(QPCI_SEC_MAGIC);
	s.type = cpu_to_le16(type);
	s.flags = 0;
	s.len = cpu_to_le32(len);
	s.crc = cpu_to_le32(qpci_crc_buf(pay, len));
	dst = m->buf + m->len;
	memcpy(dst, &s, sizeof(s));
	memcpy(dst + sizeof(s), pay, len);
	if (type != QPCI_SEC_END) {
		m->crc = qpci_crc(m->crc, dst, total);
		m->nsec++;
	}
	m->len += total;
	return 0;
}

static int qpci_save_header(struct qpci_dev *q, struct qpci_migf *m)
{
	struct pci_dev *pdev = q->core.pdev;
	struct qpci_stream_hdr h = {
		.version = cpu_to_le16(QPCI_STREAM_VERSION),
		.flags = cpu_to_le16((m->precopy ? QPCI_HDR_PRECOPY : 0) |
				     (m->has_dmabuf ? QPCI_HDR_HAS_DMABUF : 0)),
		.vendor = cpu_to_le16(pdev->vendor),
		.device = cpu_to_le16(pdev->device),
		.revision = pdev->revision,
		.regs_size = cpu_to_le32(QPCI_REGS_PAY),
		.bar0_size = cpu_to_le64(pci_resource_len(pdev, 0)),
		.dmabuf_size = cpu_to_le32(QPCI_BUF_PAY),
	};
	int ret;

	mutex_lock(&m->lock);
	ret = qpci_put_sec(m, QPCI_SEC_HEADER, &h, sizeof(h));
	m->initial_end = m->len;
	mutex_unlock(&m->lock);
	return ret;
}

static void qpci_regs_to_img(const struct qpci_regs *r, struct qpci_regs_img *i)
{
	memset(i, 0, sizeof(*i));
	i->id = cpu_to_le32(r->id);
	i->liveness = cpu_to_le32(r->liveness);
	i->fact = cpu_to_le32(r->fact);
	i->status = cpu_to_le32(r->status);
	i->irq_status = cpu_to_le32(r->irq_status);
	i->dma_src = cpu_to_le64(r->dma_src);
	i->dma_dst = cpu_to_le64(r->dma_dst);
	i->dma_cnt = cpu_to_le64(r->dma_cnt);
	i->dma_cmd = cpu_to_le64(r->dma_cmd);
}

/* STOP_COPY data: DMABUF (from the scratch page), REGS, END. */
static int qpci_save_final(struct qpci_dev *q, struct qpci_migf *m,
			   const struct qpci_regs *r)
{
	struct qpci_regs_img img;
	struct qpci_stream_end e;
	size_t regs_pos;
	int ret = 0;

	qpci_regs_to_img(r, &img);
	mutex_lock(&m->lock);
	if (m->has_dmabuf)
		ret = qpci_put_sec(m, QPCI_SEC_DMABUF, page_address(q->scratch),
				   QPCI_BUF_PAY);
	if (ret)
		goto out;
	regs_pos = m->len;
	ret = qpci_put_sec(m, QPCI_SEC_REGS, &img, sizeof(img));
	if (ret)
		goto out;
	if (q->f.corrupt_stream)	/* after the CRCs were computed */
		m->buf[regs_pos + sizeof(struct qpci_sec) +
		       offsetof(struct qpci_regs_img, fact)] ^= 0x5a;
	e.total_len = cpu_to_le64(m->len + QPCI_SEC_SIZE(QPCI_END_PAY));
	e.nsec = cpu_to_le32(m->nsec);
	e.stream_crc = cpu_to_le32(~m->crc);
	ret = qpci_put_sec(m, QPCI_SEC_END, &e, sizeof(e));
	if (ret)
		goto out;
	if (q->f.truncate_stream)	/* lose END and half of REGS */
		m->len = regs_pos + QPCI_SEC_SIZE(QPCI_REGS_PAY) / 2;
	m->final = true;
out:
	mutex_unlock(&m->lock);
	return ret;
}

static void qpci_note_save(struct qpci_dev *q, const struct qpci_regs *r,
			   bool buf)
{
	q->last_save = *r;
	q->last_save_valid = true;
	q->last_save_buf = buf;
	q->last_save_crc = buf ? qpci_crc_buf(page_address(q->scratch),
					      EDU_BUF_SIZE) : 0;
	atomic64_inc(&q->stats.saves);
}

static ssize_t qpci_save_read(struct file *filp, char __user *ubuf,
			      size_t len, loff_t *pos)
{
	struct qpci_migf *m = filp->private_data;
	ssize_t ret;
	size_t n;

	if (pos)
		return -ESPIPE;
	mutex_lock(&m->lock);
	if (READ_ONCE(m->disabled)) {
		ret = -ENODEV;
	} else if (m->off == m->len) {
		/* PRE_COPY: temporary end of stream; STOP_COPY: the end */
		ret = m->final ? 0 : -ENOMSG;
	} else {
		n = min(len, m->len - m->off);
		if (copy_to_user(ubuf, m->buf + m->off, n)) {
			ret = -EFAULT;
		} else {
			m->off += n;
			ret = n;
		}
	}
	mutex_unlock(&m->lock);
	return ret;
}

static long qpci_precopy_ioctl(struct file *filp, unsigned int cmd,
			       unsigned long arg)
{
	unsigned long minsz = offsetofend(struct vfio_precopy_info, dirty_bytes);
	struct qpci_migf *m = filp->private_data;
	struct qpci_dev *q = m->q;
	struct vfio_precopy_info info;
	int ret = 0;

	if (cmd != VFIO_MIG_GET_PRECOPY_INFO)
		return -ENOTTY;
	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;

	mutex_lock(&q->state_lock);
	if (!qpci_st_precopy(q->state) || q->saving_migf != m) {
		ret = -EINVAL;
		goto unlock;
	}
	mutex_lock(&m->lock);
	if (READ_ONCE(m->disabled)) {
		ret = -ENODEV;
	} else {
		info.flags = 0;
		/*
		 * The initial data is the stream header.  The edu's state
		 * cannot be read while it runs, so nothing ever becomes
		 * dirty: everything else comes in STOP_COPY.
		 */
		info.initial_bytes = m->off < m->initial_end ?
				     m->initial_end - m->off : 0;
		info.dirty_bytes = 0;
		switch (q->f.lie_precopy_info) {
		case QPCI_LIE_PRECOPY_ZERO:
			info.initial_bytes = 0;
			break;
		case QPCI_LIE_PRECOPY_STUCK:
			info.initial_bytes = m->initial_end;
			break;
		}
	}
	mutex_unlock(&m->lock);
unlock:
	qpci_state_unlock(q);
	if (!ret && copy_to_user((void __user *)arg, &info, minsz))
		ret = -EFAULT;
	return ret;
}

static const struct file_operations qpci_save_fops = {
	.owner = THIS_MODULE,
	.read = qpci_save_read,
	.unlocked_ioctl = qpci_precopy_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = qpci_migf_release,
};

/* ---- resuming ---- */

static void qpci_img_to_regs(const struct qpci_regs_img *i, struct qpci_regs *r)
{
	r->id = le32_to_cpu(i->id);
	r->liveness = le32_to_cpu(i->liveness);
	r->fact = le32_to_cpu(i->fact);
	r->status = le32_to_cpu(i->status);
	r->irq_status = le32_to_cpu(i->irq_status);
	r->dma_src = le64_to_cpu(i->dma_src);
	r->dma_dst = le64_to_cpu(i->dma_dst);
	r->dma_cnt = le64_to_cpu(i->dma_cnt);
	r->dma_cmd = le64_to_cpu(i->dma_cmd);
}

/* Values a quiesced edu can hold. */
static int qpci_regs_check(const struct qpci_regs *r)
{
	if ((r->id & EDU_ID_MAGIC_MASK) != EDU_ID_MAGIC ||
	    (r->status & ~EDU_STATUS_IRQFACT) ||	/* COMPUTING clear */
	    (r->dma_cmd & EDU_DMA_RUN) ||
	    qpci_fact_arg(r->fact) < 0)
		return -EINVAL;
	return 0;
}

static int qpci_rx_sec_hdr(struct qpci_migf *m)
{
	const struct qpci_sec *s = (const struct qpci_sec *)m->sec;
	bool want_buf = m->stream_flags & QPCI_HDR_HAS_DMABUF;
	u16 type = le16_to_cpu(s->type);
	u32 len = le32_to_cpu(s->len);
	u32 want;

	if (le32_to_cpu(s->magic) != QPCI_SEC_MAGIC || s->flags)
		return -EINVAL;
	/* order: HEADER, [DMABUF], REGS, END; each once */
	switch (type) {
	case QPCI_SEC_HEADER:
		if (m->got_hdr)
			return -EINVAL;
		want = QPCI_HDR_PAY;
		break;
	case QPCI_SEC_DMABUF:
		if (!m->got_hdr || !want_buf || m->got_buf || m->got_regs)
			return -EINVAL;
		want = QPCI_BUF_PAY;
		break;
	case QPCI_SEC_REGS:
		if (!m->got_hdr || m->got_regs || (want_buf && !m->got_buf))
			return -EINVAL;
		want = QPCI_REGS_PAY;
		break;
	case QPCI_SEC_END:
		if (!m->got_regs)
			return -EINVAL;
		want = QPCI_END_PAY;
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

static int qpci_rx_header(struct qpci_migf *m)
{
	const struct qpci_stream_hdr *h = (const void *)m->payload;
	struct pci_dev *pdev = m->q->core.pdev;
	u16 flags = le16_to_cpu(h->flags);

	if (le16_to_cpu(h->version) != QPCI_STREAM_VERSION ||
	    (flags & ~QPCI_HDR_FLAGS) ||
	    le16_to_cpu(h->vendor) != pdev->vendor ||
	    le16_to_cpu(h->device) != pdev->device ||
	    h->revision != pdev->revision ||
	    h->pad[0] || h->pad[1] || h->pad[2] || h->reserved ||
	    le32_to_cpu(h->regs_size) != QPCI_REGS_PAY ||
	    le64_to_cpu(h->bar0_size) != pci_resource_len(pdev, 0) ||
	    le32_to_cpu(h->dmabuf_size) != QPCI_BUF_PAY)
		return -EINVAL;
	m->stream_flags = flags;
	m->got_hdr = true;
	return 0;
}

static int qpci_rx_sec_done(struct qpci_migf *m)
{
	const struct qpci_sec *s = (const struct qpci_sec *)m->sec;
	u32 len = m->pay_len;
	int ret = 0;

	if (le32_to_cpu(s->crc) != qpci_crc_buf(m->payload, len))
		return -EINVAL;

	switch (m->sec_type) {
	case QPCI_SEC_HEADER:
		ret = qpci_rx_header(m);
		break;
	case QPCI_SEC_DMABUF:
		memcpy(m->stage_buf, m->payload, EDU_BUF_SIZE);
		m->got_buf = true;
		break;
	case QPCI_SEC_REGS: {
		const struct qpci_regs_img *img = (const void *)m->payload;

		if (img->reserved)
			return -EINVAL;
		qpci_img_to_regs(img, &m->stage_regs);
		ret = qpci_regs_check(&m->stage_regs);
		if (!ret)
			m->got_regs = true;
		break;
	}
	case QPCI_SEC_END: {
		const struct qpci_stream_end *e = (const void *)m->payload;

		if (le64_to_cpu(e->total_len) !=
		    m->received + QPCI_SEC_SIZE(QPCI_END_PAY) ||
		    le32_to_cpu(e->nsec) != m->nsec ||
		    le32_to_cpu(e->stream_crc) != ~m->crc)
			return -EINVAL;
		m->got_end = true;
		break;
	}
	}
	if (ret)
		return ret;

	if (m->sec_type != QPCI_SEC_END) {
		m->crc = qpci_crc(m->crc, m->sec, sizeof(m->sec));
		m->crc = qpci_crc(m->crc, m->payload, len);
		m->nsec++;
	}
	m->received += QPCI_SEC_SIZE(len);
	m->sec_have = 0;
	m->pay_have = 0;
	m->pay_len = 0;
	return 0;
}

static ssize_t qpci_resume_write(struct file *filp, const char __user *ubuf,
				 size_t len, loff_t *pos)
{
	struct qpci_migf *m = filp->private_data;
	size_t done = 0, n;
	int ret = 0;

	if (pos)
		return -ESPIPE;
	mutex_lock(&m->lock);
	if (READ_ONCE(m->disabled)) {
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
		if (m->sec_have < sizeof(m->sec)) {
			n = min(sizeof(m->sec) - m->sec_have, len - done);
			if (copy_from_user(m->sec + m->sec_have, ubuf + done, n)) {
				ret = -EFAULT;
				break;
			}
			m->sec_have += n;
			done += n;
			if (m->sec_have == sizeof(m->sec)) {
				ret = qpci_rx_sec_hdr(m);
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
			ret = qpci_rx_sec_done(m);
			if (ret)
				break;
		}
	}
	if (ret == -EINVAL) {
		m->broken = true;	/* no later write can repair the stream */
		atomic64_inc(&m->q->stats.load_errors);
	}
out:
	mutex_unlock(&m->lock);
	return ret ? ret : done;
}

static const struct file_operations qpci_resume_fops = {
	.owner = THIS_MODULE,
	.write = qpci_resume_write,
	.release = qpci_migf_release,
};

/* RESUMING -> STOP: everything checked, then written into the device. */
static int qpci_load(struct qpci_dev *q, bool *fatal)
{
	struct qpci_migf *m = q->resuming_migf;
	struct qpci_regs regs;
	bool has_buf;
	u32 crc = 0;
	int ret;

	*fatal = false;
	if (!m)
		return -EINVAL;
	mutex_lock(&m->lock);
	has_buf = m->stream_flags & QPCI_HDR_HAS_DMABUF;
	if (m->broken || !m->got_hdr || !m->got_regs || !m->got_end ||
	    (has_buf && !m->got_buf) || m->sec_have || m->pay_have) {
		mutex_unlock(&m->lock);
		atomic64_inc(&q->stats.load_errors);
		return -EINVAL;
	}
	regs = m->stage_regs;
	if (has_buf)
		crc = qpci_crc_buf(m->stage_buf, EDU_BUF_SIZE);
	/* the file is dropped only after this arc, so stage_buf stays */
	ret = qpci_apply(q, &regs, has_buf ? m->stage_buf : NULL, fatal);
	mutex_unlock(&m->lock);
	if (ret) {
		atomic64_inc(&q->stats.load_errors);
		return ret;
	}
	q->last_load = regs;
	q->last_load_valid = true;
	q->last_load_buf = has_buf;
	q->last_load_crc = crc;
	atomic64_inc(&q->stats.loads);
	return 0;
}

/* ---- the FSM ---- */

static bool qpci_fault_arc_hit(struct qpci_dev *q,
			       enum vfio_device_mig_state cur,
			       enum vfio_device_mig_state next)
{
	struct qpci_faults *f = &q->f;

	if (!f->arc_set ||
	    (f->arc_cur >= 0 && f->arc_cur != cur) ||
	    (f->arc_next >= 0 && f->arc_next != next))
		return false;
	f->arc_hits++;
	if (f->arc_once)
		f->arc_set = false;
	return true;
}

static bool qpci_want_dmabuf(struct qpci_dev *q)
{
	return !q->f.drop_state && q->iova_mode != QPCI_IOVA_OFF;
}

/* STOP_COPY data into @m (new or carried over from PRE_COPY). */
static int qpci_stop_copy(struct qpci_dev *q, struct qpci_migf *m,
			  bool from_stop, bool *fatal)
{
	struct qpci_regs regs;
	int ret;

	if (q->f.delay_save_ms)
		msleep(q->f.delay_save_ms);
	ret = qpci_capture(q, &regs, m->has_dmabuf, from_stop, fatal);
	if (ret)
		return ret;
	ret = qpci_save_final(q, m, &regs);
	if (ret)
		return ret;
	qpci_note_save(q, &regs, m->has_dmabuf);
	return 0;
}

static struct file *qpci_new_saving(struct qpci_dev *q, bool precopy,
				    bool *fatal)
{
	struct qpci_migf *m;
	int ret;

	m = qpci_migf_new(q, true);
	if (IS_ERR(m))
		return ERR_CAST(m);
	m->precopy = precopy;
	m->has_dmabuf = qpci_want_dmabuf(q);
	ret = qpci_save_header(q, m);
	if (!ret && !precopy)
		ret = qpci_stop_copy(q, m, true, fatal);
	if (ret) {
		fput(m->filp);
		return ERR_PTR(ret);
	}
	q->saving_migf = m;
	return get_file(m->filp);
}

/* One arc.  The caller got @next from vfio_mig_get_next_state(). */
static struct file *qpci_step(struct qpci_dev *q,
			      enum vfio_device_mig_state next)
{
	enum vfio_device_mig_state cur = q->state;
	u32 flags = q->core.vdev.migration_flags;
	struct file *res = NULL;
	bool fatal = false;
	int ret = 0;

	if (qpci_fault_arc_hit(q, cur, next)) {
		qpci_log_arc(q, cur, next, false);
		if (q->f.arc_mode == QPCI_FAIL_ERROR) {
			qpci_drop_files(q);
			qpci_set_mstate(q, VFIO_DEVICE_STATE_ERROR);
		}
		return ERR_PTR(-EIO);
	}

	if (cur == VFIO_DEVICE_STATE_STOP &&
	    next == VFIO_DEVICE_STATE_STOP_COPY) {
		res = qpci_new_saving(q, false, &fatal);
	} else if (qpci_st_precopy(cur) &&
		   next == VFIO_DEVICE_STATE_STOP_COPY) {
		/* PRE_COPY_P2P -> STOP_COPY, or PRE_COPY -> STOP_COPY without P2P */
		if (q->saving_migf)
			ret = qpci_stop_copy(q, q->saving_migf, false, &fatal);
		else	/* only after stale_state_on_close */
			res = qpci_new_saving(q, false, &fatal);
	} else if ((cur == VFIO_DEVICE_STATE_RUNNING &&
		    next == VFIO_DEVICE_STATE_PRE_COPY) ||
		   (cur == VFIO_DEVICE_STATE_RUNNING_P2P &&
		    next == VFIO_DEVICE_STATE_PRE_COPY_P2P)) {
		res = qpci_new_saving(q, true, &fatal);
	} else if ((cur == VFIO_DEVICE_STATE_PRE_COPY &&
		    next == VFIO_DEVICE_STATE_RUNNING) ||
		   (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P &&
		    next == VFIO_DEVICE_STATE_RUNNING_P2P) ||
		   (cur == VFIO_DEVICE_STATE_STOP_COPY &&
		    next == VFIO_DEVICE_STATE_STOP)) {
		qpci_drop_files(q);
	} else if (cur == VFIO_DEVICE_STATE_STOP &&
		   next == VFIO_DEVICE_STATE_RESUMING) {
		struct qpci_migf *m = qpci_migf_new(q, false);

		if (IS_ERR(m)) {
			res = ERR_CAST(m);
		} else {
			qpci_drop_files(q);
			q->resuming_migf = m;
			res = get_file(m->filp);
		}
	} else if (cur == VFIO_DEVICE_STATE_RESUMING &&
		   next == VFIO_DEVICE_STATE_STOP) {
		ret = qpci_load(q, &fatal);
		if (!ret)
			qpci_drop_files(q);
	} else if ((cur == VFIO_DEVICE_STATE_RUNNING &&
		    next == VFIO_DEVICE_STATE_RUNNING_P2P) ||
		   (cur == VFIO_DEVICE_STATE_PRE_COPY &&
		    next == VFIO_DEVICE_STATE_PRE_COPY_P2P)) {
		ret = qpci_quiesce(q, true, q->f.p2p_in_running_p2p);
	} else if ((cur == VFIO_DEVICE_STATE_RUNNING_P2P ||
		    cur == VFIO_DEVICE_STATE_RUNNING) &&
		   next == VFIO_DEVICE_STATE_STOP) {
		ret = qpci_quiesce(q, false, q->f.dma_after_stop);
	} else if (cur == VFIO_DEVICE_STATE_STOP && qpci_st_running(next)) {
		/* STOP -> RUNNING_P2P, or STOP -> RUNNING without P2P */
		ret = qpci_apply_fixups(q, &fatal);
	} else if ((cur == VFIO_DEVICE_STATE_RUNNING_P2P &&
		    next == VFIO_DEVICE_STATE_RUNNING) ||
		   (cur == VFIO_DEVICE_STATE_PRE_COPY_P2P &&
		    next == VFIO_DEVICE_STATE_PRE_COPY)) {
		/* leaving P2P quiescence needs nothing from the device */
	} else {
		WARN_ONCE(1, "qmigpci: unexpected arc %s->%s (flags 0x%x)\n",
			  qpci_state_name(cur), qpci_state_name(next), flags);
		ret = -EINVAL;
	}

	if (ret)
		res = ERR_PTR(ret);
	if (IS_ERR(res)) {
		qpci_log_arc(q, cur, next, false);
		if (fatal) {
			/* the device was partly rewritten: no valid state left */
			qpci_drop_files(q);
			qpci_set_mstate(q, VFIO_DEVICE_STATE_ERROR);
		}
		return res;
	}
	qpci_log_arc(q, cur, next, true);
	qpci_set_mstate(q, next);
	return res;
}

static struct file *qpci_set_state(struct vfio_device *vdev,
				   enum vfio_device_mig_state new_state)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);
	struct file *res = NULL;

	mutex_lock(&q->state_lock);
	/*
	 * Only VFIO_DEVICE_RESET leaves ERROR, and vfio_mig_get_next_state()
	 * WARNs on a current state the flags do not allow (a stale state
	 * after stale_state_on_close and a flag change): refuse both here.
	 */
	if (q->state == VFIO_DEVICE_STATE_ERROR ||
	    !qpci_state_supported(q->state, vdev->migration_flags)) {
		res = ERR_PTR(-EINVAL);
		goto out;
	}
	while (q->state != new_state) {
		enum vfio_device_mig_state next;
		int ret;

		/* one call per arc */
		ret = vfio_mig_get_next_state(vdev, q->state, new_state, &next);
		if (ret) {
			res = ERR_PTR(ret);
			break;
		}
		res = qpci_step(q, next);
		if (IS_ERR(res))
			break;
		if (WARN_ON(res && next != new_state)) {
			fput(res);
			res = ERR_PTR(-EINVAL);
			break;
		}
	}
out:
	qpci_state_unlock(q);
	return res;
}

static int qpci_get_state(struct vfio_device *vdev,
			  enum vfio_device_mig_state *cur)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);

	mutex_lock(&q->state_lock);
	*cur = q->state;
	qpci_state_unlock(q);
	return 0;
}

static int qpci_get_data_size(struct vfio_device *vdev, unsigned long *len)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);
	struct qpci_migf *m;
	u64 size;

	mutex_lock(&q->state_lock);
	m = q->saving_migf;
	if (q->f.lie_data_size >= 0) {
		size = q->f.lie_data_size;
	} else if (m) {
		mutex_lock(&m->lock);
		size = m->len - m->off;
		if (!m->final)
			size += (m->has_dmabuf ? QPCI_SEC_SIZE(QPCI_BUF_PAY) : 0) +
				QPCI_SEC_SIZE(QPCI_REGS_PAY) +
				QPCI_SEC_SIZE(QPCI_END_PAY);
		mutex_unlock(&m->lock);
	} else {
		size = QPCI_STREAM_SIZE(qpci_want_dmabuf(q));
	}
	qpci_state_unlock(q);
	*len = size;
	return 0;
}

static const struct vfio_migration_ops qpci_mig_ops = {
	.migration_set_state = qpci_set_state,
	.migration_get_state = qpci_get_state,
	.migration_get_data_size = qpci_get_data_size,
};

/* ---- vfio_device_ops ---- */

static int qpci_init_dev(struct vfio_device *vdev)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);
	int ret;

	q->scratch = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!q->scratch)
		return -ENOMEM;
	ret = vfio_pci_core_init_dev(vdev);
	if (ret) {
		__free_page(q->scratch);
		return ret;
	}
	mutex_init(&q->state_lock);
	spin_lock_init(&q->reset_lock);
#define X(n) atomic64_set(&q->stats.n, 0);
	QPCI_STATS(X)
#undef X
	q->f.lie_data_size = -1;
	q->iova_mode = QPCI_IOVA_AUTO;
	q->state = VFIO_DEVICE_STATE_RUNNING;
	q->want_flags = VFIO_MIGRATION_STOP_COPY |
			(READ_ONCE(default_p2p) ? VFIO_MIGRATION_P2P : 0) |
			(READ_ONCE(default_precopy) ? VFIO_MIGRATION_PRE_COPY : 0);
	vdev->migration_flags = q->want_flags;
	vdev->mig_ops = &qpci_mig_ops;
	return 0;
}

static void qpci_release_dev(struct vfio_device *vdev)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);

	mutex_destroy(&q->state_lock);
	__free_page(q->scratch);
	vfio_pci_core_release_dev(vdev);
}

static int qpci_open_device(struct vfio_device *vdev)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);
	struct vfio_pci_core_device *core = &q->core;
	int ret;

	ret = vfio_pci_core_enable(core);
	if (ret)
		return ret;
	/* map BAR0 now so that the arcs can reach the registers */
	ret = vfio_pci_core_setup_barmap(core, 0);
	if (ret)
		pci_warn(core->pdev, "BAR0 not mapped (%d): migration arcs will fail\n",
			 ret);

	mutex_lock(&q->state_lock);
	/* the per-function switches take effect here */
	vdev->migration_flags = q->want_flags;
	qpci_state_unlock(q);

	vfio_pci_core_finish_enable(core);
	return 0;
}

static void qpci_close_device(struct vfio_device *vdev)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);

	mutex_lock(&q->state_lock);
	qpci_drop_files(q);
	q->fix_cmd_pending = false;
	q->fix_irq_pending = false;
	if (!q->f.stale_state_on_close)
		qpci_set_mstate(q, VFIO_DEVICE_STATE_RUNNING);
	WRITE_ONCE(q->closing, true);
	qpci_state_unlock(q);
	vfio_pci_core_close_device(vdev);
	/* a reset the core did while the lock was taken runs here, still closing */
	mutex_lock(&q->state_lock);
	qpci_state_unlock(q);
	WRITE_ONCE(q->closing, false);
}

static long qpci_ioctl(struct vfio_device *vdev, unsigned int cmd,
		       unsigned long arg)
{
	struct qpci_dev *q = qpci_from_vdev(vdev);

	if (cmd == VFIO_DEVICE_RESET) {
		switch (READ_ONCE(q->f.refuse_reset)) {
		case QPCI_REFUSE_FAIL:
			atomic64_inc(&q->stats.resets_refused);
			return -EIO;
		case QPCI_REFUSE_IGNORE:
			atomic64_inc(&q->stats.resets_refused);
			return 0;
		}
		/* the core resets the function; reset_done() does the rest */
	}
	return vfio_pci_core_ioctl(vdev, cmd, arg);
}

static const struct vfio_device_ops qpci_dev_ops = {
	.name = QPCI_NAME,
	.init = qpci_init_dev,
	.release = qpci_release_dev,
	.open_device = qpci_open_device,
	.close_device = qpci_close_device,
	.ioctl = qpci_ioctl,
	.device_feature = vfio_pci_core_ioctl_feature,
	.read = vfio_pci_core_read,
	.write = vfio_pci_core_write,
	.mmap = vfio_pci_core_mmap,
	.request = vfio_pci_core_request,
	.match = vfio_pci_core_match,
	.bind_iommufd = vfio_iommufd_physical_bind,
	.unbind_iommufd = vfio_iommufd_physical_unbind,
	.attach_ioas = vfio_iommufd_physical_attach_ioas,
	.detach_ioas = vfio_iommufd_physical_detach_ioas,
};

/* ---- sysfs: /sys/bus/pci/devices/<bdf>/qmigpci/ ---- */

#define QPCI_COUNTER_ATTR(name)						\
static ssize_t name##_show(struct device *dev,				\
			   struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, "%lld\n",				\
			  atomic64_read(&qpci_from_dev(dev)->stats.name)); \
}									\
static DEVICE_ATTR_RO(name)

QPCI_COUNTER_ATTR(resets);
QPCI_COUNTER_ATTR(resets_refused);
QPCI_COUNTER_ATTR(saves);
QPCI_COUNTER_ATTR(loads);
QPCI_COUNTER_ATTR(load_errors);
QPCI_COUNTER_ATTR(arc_failures);
QPCI_COUNTER_ATTR(writes_while_stopped);
QPCI_COUNTER_ATTR(p2p_while_quiesced);
QPCI_COUNTER_ATTR(quiesce_waits);
QPCI_COUNTER_ATTR(quiesce_timeouts);
QPCI_COUNTER_ATTR(dma_ops);
QPCI_COUNTER_ATTR(dma_errors);

static ssize_t counters_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	int n = 0;

#define X(name) n += sysfs_emit_at(buf, n, "%s %lld\n", #name,		\
				   atomic64_read(&q->stats.name));
	QPCI_STATS(X)
#undef X
	return n;
}
static DEVICE_ATTR_RO(counters);

static ssize_t clear_counters_store(struct device *dev,
				    struct device_attribute *attr,
				    const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);

#define X(name) atomic64_set(&q->stats.name, 0);
	QPCI_STATS(X)
#undef X
	return count;
}
static DEVICE_ATTR_WO(clear_counters);

static ssize_t state_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  qpci_state_name(READ_ONCE(qpci_from_dev(dev)->state)));
}
static DEVICE_ATTR_RO(state);

static ssize_t arcs_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	unsigned int i;
	int n = 0;

	mutex_lock(&q->state_lock);
	for (i = 0; i < q->arc_count; i++) {
		const struct qpci_arc *a =
			&q->arcs[(q->arc_head + QPCI_ARC_LOG - q->arc_count + i) %
				 QPCI_ARC_LOG];

		n += sysfs_emit_at(buf, n, "%s->%s%s\n", qpci_state_name(a->cur),
				   qpci_state_name(a->next), a->ok ? "" : " FAILED");
	}
	qpci_state_unlock(q);
	return n;
}

static ssize_t arcs_store(struct device *dev, struct device_attribute *attr,
			  const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);

	mutex_lock(&q->state_lock);
	q->arc_head = 0;
	q->arc_count = 0;
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(arcs);

static ssize_t migration_flags_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	u32 flags = READ_ONCE(qpci_from_dev(dev)->core.vdev.migration_flags);

	return sysfs_emit(buf, "0x%x%s%s%s\n", flags,
			  flags & VFIO_MIGRATION_STOP_COPY ? " STOP_COPY" : "",
			  flags & VFIO_MIGRATION_P2P ? " P2P" : "",
			  flags & VFIO_MIGRATION_PRE_COPY ? " PRE_COPY" : "");
}
static DEVICE_ATTR_RO(migration_flags);

static ssize_t qpci_flag_show(struct device *dev, char *buf, u32 bit)
{
	return sysfs_emit(buf, "%d\n",
			  !!(READ_ONCE(qpci_from_dev(dev)->want_flags) & bit));
}

/* Taken into vdev->migration_flags at the next open_device. */
static ssize_t qpci_flag_store(struct device *dev, const char *buf,
			       size_t count, u32 bit)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	bool on;
	int ret;

	ret = kstrtobool(buf, &on);
	if (ret)
		return ret;
	mutex_lock(&q->state_lock);
	WRITE_ONCE(q->want_flags, on ? q->want_flags | bit : q->want_flags & ~bit);
	qpci_state_unlock(q);
	return count;
}

static ssize_t enable_p2p_show(struct device *dev, struct device_attribute *attr,
			       char *buf)
{
	return qpci_flag_show(dev, buf, VFIO_MIGRATION_P2P);
}

static ssize_t enable_p2p_store(struct device *dev, struct device_attribute *attr,
				const char *buf, size_t count)
{
	return qpci_flag_store(dev, buf, count, VFIO_MIGRATION_P2P);
}
static DEVICE_ATTR_RW(enable_p2p);

static ssize_t enable_precopy_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return qpci_flag_show(dev, buf, VFIO_MIGRATION_PRE_COPY);
}

static ssize_t enable_precopy_store(struct device *dev,
				    struct device_attribute *attr,
				    const char *buf, size_t count)
{
	return qpci_flag_store(dev, buf, count, VFIO_MIGRATION_PRE_COPY);
}
static DEVICE_ATTR_RW(enable_precopy);

static ssize_t reset_works_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	/*
	 * The core learns reset_works only when the device is opened; the PCI
	 * core's list of reset methods is known from probe on, and is what
	 * that later test will find.
	 */
	return sysfs_emit(buf, "%d\n",
			  qpci_from_dev(dev)->core.pdev->reset_methods[0] != 0);
}
static DEVICE_ATTR_RO(reset_works);

static ssize_t dma_iova_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	ssize_t n;

	mutex_lock(&q->state_lock);
	switch (q->iova_mode) {
	case QPCI_IOVA_OFF:
		n = sysfs_emit(buf, "off\n");
		break;
	case QPCI_IOVA_FIXED:
		n = sysfs_emit(buf, "0x%llx\n", q->iova_fixed);
		break;
	default:
		n = sysfs_emit(buf, "auto\n");
		break;
	}
	qpci_state_unlock(q);
	return n;
}

/* "auto", "off", or a page-aligned IOVA */
static ssize_t dma_iova_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	int mode;
	u64 v = 0;
	int ret;

	if (sysfs_streq(buf, "auto")) {
		mode = QPCI_IOVA_AUTO;
	} else if (sysfs_streq(buf, "off")) {
		mode = QPCI_IOVA_OFF;
	} else {
		ret = kstrtou64(buf, 0, &v);
		if (ret)
			return ret;
		if (!v || !PAGE_ALIGNED(v))
			return -EINVAL;
		mode = QPCI_IOVA_FIXED;
	}
	mutex_lock(&q->state_lock);
	q->iova_mode = mode;
	q->iova_fixed = v;
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(dma_iova);

static ssize_t scratch_iova_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "0x%llx\n",
			  READ_ONCE(qpci_from_dev(dev)->scratch_iova));
}
static DEVICE_ATTR_RO(scratch_iova);

static ssize_t qpci_regs_show(struct qpci_dev *q, char *buf,
			      const struct qpci_regs *r, const bool *valid,
			      const bool *has_buf, const u32 *crc)
{
	ssize_t n;

	mutex_lock(&q->state_lock);
	if (!*valid)
		n = sysfs_emit(buf, "none\n");
	else if (*has_buf)
		n = sysfs_emit(buf,
			       "liveness=0x%08x fact=0x%08x status=0x%08x irq_status=0x%08x dma_src=0x%llx dma_dst=0x%llx dma_cnt=0x%llx dma_cmd=0x%llx dma_buf_crc=0x%08x\n",
			       r->liveness, r->fact, r->status, r->irq_status,
			       r->dma_src, r->dma_dst, r->dma_cnt, r->dma_cmd,
			       *crc);
	else
		n = sysfs_emit(buf,
			       "liveness=0x%08x fact=0x%08x status=0x%08x irq_status=0x%08x dma_src=0x%llx dma_dst=0x%llx dma_cnt=0x%llx dma_cmd=0x%llx dma_buf=none\n",
			       r->liveness, r->fact, r->status, r->irq_status,
			       r->dma_src, r->dma_dst, r->dma_cnt, r->dma_cmd);
	qpci_state_unlock(q);
	return n;
}

static ssize_t last_save_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);

	return qpci_regs_show(q, buf, &q->last_save, &q->last_save_valid,
			      &q->last_save_buf, &q->last_save_crc);
}
static DEVICE_ATTR_RO(last_save);

static ssize_t last_load_show(struct device *dev, struct device_attribute *attr,
			      char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);

	return qpci_regs_show(q, buf, &q->last_load, &q->last_load_valid,
			      &q->last_load_buf, &q->last_load_crc);
}
static DEVICE_ATTR_RO(last_load);

/* boolean fault knobs */
#define QPCI_BOOL_FAULT_ATTR(name)					\
static ssize_t name##_show(struct device *dev,				\
			   struct device_attribute *attr, char *buf)	\
{									\
	return sysfs_emit(buf, "%d\n", READ_ONCE(qpci_from_dev(dev)->f.name)); \
}									\
static ssize_t name##_store(struct device *dev,				\
			    struct device_attribute *attr,		\
			    const char *buf, size_t count)		\
{									\
	struct qpci_dev *q = qpci_from_dev(dev);			\
	bool v;								\
	int ret = kstrtobool(buf, &v);					\
									\
	if (ret)							\
		return ret;						\
	mutex_lock(&q->state_lock);					\
	WRITE_ONCE(q->f.name, v);					\
	qpci_state_unlock(q);						\
	return count;							\
}									\
static DEVICE_ATTR_RW(name)

QPCI_BOOL_FAULT_ATTR(dma_after_stop);
QPCI_BOOL_FAULT_ATTR(p2p_in_running_p2p);
QPCI_BOOL_FAULT_ATTR(corrupt_stream);
QPCI_BOOL_FAULT_ATTR(truncate_stream);
QPCI_BOOL_FAULT_ATTR(drop_state);
QPCI_BOOL_FAULT_ATTR(stale_state_on_close);

static const char * const qpci_fail_modes[] = { "stay", "error" };
static const char * const qpci_lie_precopy_modes[] = { "off", "zero", "stuck" };
static const char * const qpci_refuse_modes[] = { "off", "fail", "ignore" };

static ssize_t fail_arc_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	struct qpci_faults *f = &q->f;
	ssize_t n;

	mutex_lock(&q->state_lock);
	if (!f->arc_set)
		n = sysfs_emit(buf, "none hits=%u\n", f->arc_hits);
	else
		n = sysfs_emit(buf, "%s->%s %s%s hits=%u\n",
			       f->arc_cur < 0 ? "*" : qpci_state_name(f->arc_cur),
			       f->arc_next < 0 ? "*" : qpci_state_name(f->arc_next),
			       qpci_fail_modes[f->arc_mode],
			       f->arc_once ? " once" : "", f->arc_hits);
	qpci_state_unlock(q);
	return n;
}

static int qpci_parse_state_or_any(const char *s)
{
	return strcmp(s, "*") ? qpci_state_from_name(s) : -1;
}

/* "CUR->NEXT [stay|error] [once]" with "*" for any state; "none" clears */
static ssize_t fail_arc_store(struct device *dev, struct device_attribute *attr,
			      const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	int cur, next, mode = QPCI_FAIL_STAY;
	char *copy, *p, *tok, *arrow;
	bool once = false;
	ssize_t ret = -EINVAL;

	copy = kstrndup(buf, count, GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	p = strim(copy);
	if (!*p || !strcasecmp(p, "none") || !strcasecmp(p, "off")) {
		mutex_lock(&q->state_lock);
		q->f.arc_set = false;
		q->f.arc_hits = 0;
		qpci_state_unlock(q);
		ret = count;
		goto out;
	}
	tok = strsep(&p, " \t");
	arrow = strstr(tok, "->");
	if (!arrow)
		goto out;
	*arrow = '\0';
	cur = qpci_parse_state_or_any(tok);
	next = qpci_parse_state_or_any(arrow + 2);
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
		i = match_string(qpci_fail_modes, ARRAY_SIZE(qpci_fail_modes), tok);
		if (i < 0)
			goto out;
		mode = i;
	}
	mutex_lock(&q->state_lock);
	q->f.arc_set = true;
	q->f.arc_cur = cur;
	q->f.arc_next = next;
	q->f.arc_mode = mode;
	q->f.arc_once = once;
	q->f.arc_hits = 0;
	qpci_state_unlock(q);
	ret = count;
out:
	kfree(copy);
	return ret;
}
static DEVICE_ATTR_RW(fail_arc);

static ssize_t lie_data_size_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	s64 v = READ_ONCE(qpci_from_dev(dev)->f.lie_data_size);

	return v < 0 ? sysfs_emit(buf, "off\n") : sysfs_emit(buf, "%lld\n", v);
}

static ssize_t lie_data_size_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	s64 v = -1;
	int ret;

	if (!sysfs_streq(buf, "off")) {
		ret = kstrtos64(buf, 0, &v);
		if (ret)
			return ret;
	}
	mutex_lock(&q->state_lock);
	WRITE_ONCE(q->f.lie_data_size, v < 0 ? -1 : v);
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(lie_data_size);

static ssize_t lie_precopy_info_show(struct device *dev,
				     struct device_attribute *attr, char *buf)
{
	int i = READ_ONCE(qpci_from_dev(dev)->f.lie_precopy_info);

	return sysfs_emit(buf, "%s\n", qpci_lie_precopy_modes[i]);
}

static ssize_t lie_precopy_info_store(struct device *dev,
				      struct device_attribute *attr,
				      const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	int i = sysfs_match_string(qpci_lie_precopy_modes, buf);

	if (i < 0)
		return i;
	mutex_lock(&q->state_lock);
	WRITE_ONCE(q->f.lie_precopy_info, i);
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(lie_precopy_info);

static ssize_t refuse_reset_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	int i = READ_ONCE(qpci_from_dev(dev)->f.refuse_reset);

	return sysfs_emit(buf, "%s\n", qpci_refuse_modes[i]);
}

static ssize_t refuse_reset_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	int i = sysfs_match_string(qpci_refuse_modes, buf);
	bool v;

	if (i < 0) {		/* a boolean also works: 1 = fail */
		if (kstrtobool(buf, &v))
			return -EINVAL;
		i = v ? QPCI_REFUSE_FAIL : QPCI_REFUSE_OFF;
	}
	mutex_lock(&q->state_lock);
	WRITE_ONCE(q->f.refuse_reset, i);
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(refuse_reset);

static ssize_t delay_save_ms_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(qpci_from_dev(dev)->f.delay_save_ms));
}

static ssize_t delay_save_ms_store(struct device *dev,
				   struct device_attribute *attr,
				   const char *buf, size_t count)
{
	struct qpci_dev *q = qpci_from_dev(dev);
	u32 v;
	int ret = kstrtou32(buf, 0, &v);

	if (ret)
		return ret;
	if (v > QPCI_DELAY_MAX_MS)
		return -ERANGE;
	mutex_lock(&q->state_lock);
	WRITE_ONCE(q->f.delay_save_ms, v);
	qpci_state_unlock(q);
	return count;
}
static DEVICE_ATTR_RW(delay_save_ms);

static struct attribute *qpci_dev_attrs[] = {
	&dev_attr_state.attr,
	&dev_attr_migration_flags.attr,
	&dev_attr_enable_p2p.attr,
	&dev_attr_enable_precopy.attr,
	&dev_attr_reset_works.attr,
	&dev_attr_dma_iova.attr,
	&dev_attr_scratch_iova.attr,
	&dev_attr_last_save.attr,
	&dev_attr_last_load.attr,
	&dev_attr_arcs.attr,
	&dev_attr_counters.attr,
	&dev_attr_clear_counters.attr,
	&dev_attr_resets.attr,
	&dev_attr_resets_refused.attr,
	&dev_attr_saves.attr,
	&dev_attr_loads.attr,
	&dev_attr_load_errors.attr,
	&dev_attr_arc_failures.attr,
	&dev_attr_writes_while_stopped.attr,
	&dev_attr_p2p_while_quiesced.attr,
	&dev_attr_quiesce_waits.attr,
	&dev_attr_quiesce_timeouts.attr,
	&dev_attr_dma_ops.attr,
	&dev_attr_dma_errors.attr,
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

static const struct attribute_group qpci_dev_group = {
	.name = QPCI_NAME,
	.attrs = qpci_dev_attrs,
};

static const struct attribute_group *qpci_dev_groups[] = {
	&qpci_dev_group,
	NULL,
};

/* ---- PCI driver ---- */

static int qpci_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct qpci_dev *q;
	int ret;

	/* the registers this driver uses must lie in a memory BAR0 */
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < EDU_REGS_END)
		return -ENODEV;

	q = vfio_alloc_device(qpci_dev, core.vdev, &pdev->dev, &qpci_dev_ops);
	if (IS_ERR(q))
		return PTR_ERR(q);
	dev_set_drvdata(&pdev->dev, &q->core);
	ret = vfio_pci_core_register_device(&q->core);
	if (ret) {
		vfio_put_device(&q->core.vdev);
		return ret;
	}
	return 0;
}

static void qpci_remove(struct pci_dev *pdev)
{
	struct qpci_dev *q = qpci_from_dev(&pdev->dev);

	vfio_pci_core_unregister_device(&q->core);
	vfio_put_device(&q->core.vdev);
}

/*
 * Called after any reset of the function, with memory_lock held when it
 * comes from VFIO_DEVICE_RESET, so state_lock may only be try-locked: if it
 * is taken, its holder runs the reset in qpci_state_unlock().
 */
static void qpci_reset_done(struct pci_dev *pdev)
{
	struct qpci_dev *q = qpci_from_dev(&pdev->dev);

	spin_lock(&q->reset_lock);
	q->deferred_reset = true;
	if (!mutex_trylock(&q->state_lock)) {
		spin_unlock(&q->reset_lock);
		return;
	}
	spin_unlock(&q->reset_lock);
	qpci_state_unlock(q);
}

static const struct pci_error_handlers qpci_err_handlers = {
	.reset_done = qpci_reset_done,
	.error_detected = vfio_pci_core_aer_err_detected,
};

static const struct pci_device_id qpci_table[] = {
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(EDU_VENDOR, EDU_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, qpci_table);

static struct pci_driver qpci_driver = {
	.name = QPCI_NAME,
	.id_table = qpci_table,
	.probe = qpci_probe,
	.remove = qpci_remove,
	.err_handler = &qpci_err_handlers,
	.dev_groups = qpci_dev_groups,
	.driver_managed_dma = true,
};

static int __init qpci_init(void)
{
	qpci_fact_init();
	return pci_register_driver(&qpci_driver);
}

static void __exit qpci_exit(void)
{
	pci_unregister_driver(&qpci_driver);
}

module_init(qpci_init);
module_exit(qpci_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("qmp-mig vfio-pci variant driver with migration for QEMU's edu device");
MODULE_VERSION(QPCI_VERSION_STR);
MODULE_AUTHOR("qmp-mig");
