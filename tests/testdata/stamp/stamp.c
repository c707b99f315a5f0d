/*
 * stamp: writes and reads stamped 4 KiB blocks through a real iSCSI
 * initiator (libiscsi's synchronous API), for Tandem's failover tests.
 *
 * Why: a failover test must trust no node. Every block this program writes
 * says what it is (its LBA, the writer, a sequence number, a checksum), and
 * the history of what was issued, acknowledged and failed goes to stdout,
 * one flushed line per event, into the test process's files: a node that
 * crashes or lies cannot lose or rewrite it. The test's checker
 * (tests/stamp_test.go) then holds every read and the final contents to
 * that history.
 *
 * One connection, one command at a time. libiscsi's own reconnection is
 * turned off (it would resend a command whose first copy may have landed):
 * on any error the context is destroyed, the command is recorded as failed
 * (outcome unknown) and the program logs in again, trying the portals in
 * order, and on a portal whose path is not active (ALUA standby or
 * unavailable) tries the next one. libiscsi follows login redirects
 * itself.
 *
 * Build: gcc -O2 -Wall -Werror -o stamp stamp.c -liscsi
 *
 * Usage:
 *   stamp run  --portals H:P[,H:P...] --target IQN [--lun 0] --writer W
 *              --writers K --blocks N --seconds S [--read-every R]
 *              [--timeout T] [--max-outage O] [--seed X]
 *   stamp dump --portals H:P[,H:P...] --target IQN [--lun 0] --blocks N
 *              [--timeout T] [--max-outage O]
 *
 * Blocks are 4 KiB; block b starts at LBA b * (4096 / logical block size),
 * and every <lba> printed or stamped is that SCSI LBA. Writer W owns the
 * blocks b < N with b % K == W. Times are CLOCK_MONOTONIC nanoseconds.
 *
 * run, on stdout:
 *   C <t> <portal>               logged in (the portal dialled; a redirect
 *                                may have moved the session elsewhere)
 *   D <t> <reason>               connection dropped by this program
 *   W <seq> <lba> <t>            before WRITE(16) of stamp seq is sent
 *   A <seq> <t>                  it completed with GOOD status
 *   F <seq> <t> <reason>         it failed or timed out: outcome unknown
 *   R <id> <lba> <t>             before READ(16) id is sent
 *   V <id> <t> <writer> <seq>    the stamp read (0 0: an all-zero block)
 *   X <id> <t> <reason>          the read failed
 *   B <id> <t> <what>            the block read is neither zero nor a valid
 *                                stamp for that LBA
 *   E <t> writes=<n> acked=<n> failed=<n> reads=<n> outage_max_ms=<n>
 * outage_max_ms is the longest time between two successful operations
 * (counting from the start, and to the end if the run ended failing).
 *
 * dump, on stdout (connections are logged on stderr):
 *   S <lba> <writer> <seq>       a valid stamp (0 0: an all-zero block)
 *   B <lba> <what>               an invalid block
 *
 * Block layout: bytes 0-7 "TNDMSTMP", 8-15 LBA (u64 LE), 16-19 writer
 * (u32 LE), 20-27 seq (u64 LE, from 1), 28-35 issue time (u64 LE), then
 * filler derived from (lba, writer, seq), and bytes 4088-4095 the FNV-1a 64
 * of bytes 0-4087 (LE).
 *
 * --timeout T (default 5): a command (or a login) with no answer after T
 * to T+1 seconds fails. --max-outage O (default 30): how long without a
 * login before giving up. --read-every R (default 0, none): every R-th
 * operation is a read. --seed X (default 1) seeds the choice of blocks.
 *
 * Exit: 0 done; 1 fatal (volume too small, I/O on stdout failed); 2 bad
 * flags; 3 no portal took a login (dump: no read succeeded) for O seconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BLOCK 4096
#define SUM_AT (BLOCK - 8)
#define FILL_AT 36
#define MAGIC "TNDMSTMP"
#define DUMP_BLOCKS 64 /* 256 KiB per READ(16) */
#define MAX_PORTALS 16
#define MAX_BLOCKS (UINT64_C(1) << 40)
#define RETRY_NS (50 * 1000000LL)

enum { EXIT_FATAL = 1, EXIT_USAGE = 2, EXIT_OUTAGE = 3 };

struct opts {
	int dump;
	char *portals[MAX_PORTALS];
	int nportals;
	const char *target;
	uint64_t lun;
	uint64_t writer, writers, blocks, seconds, read_every, timeout, max_outage, seed;
	int have_writer, have_writers, have_blocks, have_seconds;
};

/* conn is the one session and how to make another. */
struct conn {
	const struct opts *o;
	struct iscsi_context *iscsi; /* NULL while disconnected */
	int next_portal;             /* round robin over o->portals */
	uint32_t block_size;         /* from READ CAPACITY(16); 0 until known */
	char initiator[64];
	FILE *log; /* where C and D lines go */
	char last_error[256];
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
	struct timespec ts = {ns / 1000000000LL, ns % 1000000000LL};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* emit writes one history line and flushes it: the test keeps it even if
 * this program or a node dies right after. */
static void emit(FILE *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	if (fflush(f) != 0 || ferror(f)) {
		fprintf(stderr, "stamp: writing the history: %s\n", strerror(errno));
		exit(EXIT_FATAL);
	}
}

/* oneline copies s into buf with control characters made spaces, so that
 * a reason stays on its line. */
static const char *oneline(char *buf, size_t n, const char *s)
{
	size_t i;
	if (s == NULL || *s == 0) {
		s = "unknown error";
	}
	for (i = 0; i + 1 < n && s[i]; i++) {
		buf[i] = (s[i] < 0x20 || s[i] == 0x7f) ? ' ' : s[i];
	}
	buf[i] = 0;
	return buf;
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		p[i] = (unsigned char)(v >> (8 * i));
	}
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--) {
		v = v << 8 | p[i];
	}
	return v;
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
	uint64_t h = UINT64_C(14695981039346656037);
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= UINT64_C(1099511628211);
	}
	return h;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static void fill(unsigned char *p, uint64_t lba, uint32_t writer, uint64_t seq)
{
	uint64_t s = lba * UINT64_C(0x9e3779b97f4a7c15) ^ (uint64_t)writer << 40 ^ seq;
	uint64_t w = 0;
	for (int i = FILL_AT; i < SUM_AT; i++) {
		if ((i - FILL_AT) % 8 == 0) {
			w = splitmix64(&s);
		}
		p[i] = (unsigned char)w;
		w >>= 8;
	}
}

static void build(unsigned char *p, uint64_t lba, uint32_t writer, uint64_t seq, int64_t t)
{
	memcpy(p, MAGIC, 8);
	put64(p + 8, lba);
	for (int i = 0; i < 4; i++) {
		p[16 + i] = (unsigned char)(writer >> (8 * i));
	}
	put64(p + 20, seq);
	put64(p + 28, (uint64_t)t);
	fill(p, lba, writer, seq);
	put64(p + SUM_AT, fnv1a64(p, SUM_AT));
}

/* verify says what the block read at lba holds: 0 and writer=seq=0 for an
 * all-zero block, 0 and the stamp for a valid one, -1 and what is wrong
 * for anything else. */
static int verify(const unsigned char *p, uint64_t lba, uint32_t *writer, uint64_t *seq, char *what, size_t n)
{
	static unsigned char want[BLOCK];
	int zero = 1;
	for (int i = 0; i < BLOCK; i++) {
		if (p[i]) {
			zero = 0;
			break;
		}
	}
	*writer = 0;
	*seq = 0;
	if (zero) {
		return 0;
	}
	if (memcmp(p, MAGIC, 8) != 0) {
		snprintf(what, n, "bad magic %016" PRIx64, get64(p));
		return -1;
	}
	uint64_t sum = fnv1a64(p, SUM_AT), stored = get64(p + SUM_AT);
	if (sum != stored) {
		snprintf(what, n, "bad checksum: stored %016" PRIx64 " computed %016" PRIx64, stored, sum);
		return -1;
	}
	uint32_t w = (uint32_t)p[16] | (uint32_t)p[17] << 8 | (uint32_t)p[18] << 16 | (uint32_t)p[19] << 24;
	uint64_t s = get64(p + 20), at = get64(p + 8);
	if (at != lba) {
		snprintf(what, n, "stamp of LBA %" PRIu64 " (writer %" PRIu32 " seq %" PRIu64 ") read at LBA %" PRIu64, at, w, s, lba);
		return -1;
	}
	if (s == 0) {
		snprintf(what, n, "stamp with seq 0 (writer %" PRIu32 ")", w);
		return -1;
	}
	fill(want, at, w, s);
	if (memcmp(p + FILL_AT, want + FILL_AT, SUM_AT - FILL_AT) != 0) {
		snprintf(what, n, "filler does not match writer %" PRIu32 " seq %" PRIu64, w, s);
		return -1;
	}
	*writer = w;
	*seq = s;
	return 0;
}

/* describe says why a command did not complete GOOD. */
static const char *describe(struct conn *c, struct scsi_task *task, char *buf, size_t n)
{
	char err[200];
	oneline(err, sizeof(err), c->iscsi ? iscsi_get_error(c->iscsi) : NULL);
	if (task == NULL) {
		snprintf(buf, n, "not sent: %s", err);
	} else if (task->status == SCSI_STATUS_TIMEOUT) {
		snprintf(buf, n, "timeout after %" PRIu64 " s", c->o->timeout);
	} else if (task->status == SCSI_STATUS_CANCELLED) {
		snprintf(buf, n, "connection lost: %s", err);
	} else if (task->status == SCSI_STATUS_CHECK_CONDITION) {
		snprintf(buf, n, "check condition: sense key %#x asc/ascq %#06x", (unsigned)task->sense.key,
			 (unsigned)task->sense.ascq);
	} else if (task->status == SCSI_STATUS_ERROR) {
		snprintf(buf, n, "error: %s", err);
	} else {
		snprintf(buf, n, "status %#x", (unsigned)task->status);
	}
	return buf;
}

/* lose drops the connection after an error. */
static void lose(struct conn *c, const char *reason)
{
	char r[256];
	emit(c->log, "D %" PRId64 " %s\n", now_ns(), oneline(r, sizeof(r), reason));
	iscsi_destroy_context(c->iscsi);
	c->iscsi = NULL;
}

/* capacity checks the LUN once: its block size divides 4 KiB and it holds
 * the N blocks. A failed READ CAPACITY is a failed login attempt. */
static int capacity(struct conn *c, struct iscsi_context *iscsi)
{
	struct scsi_task *task = iscsi_readcapacity16_sync(iscsi, (int)c->o->lun);
	struct scsi_readcapacity16 *rc;
	if (task == NULL || task->status != SCSI_STATUS_GOOD || (rc = scsi_datain_unmarshall(task)) == NULL) {
		char err[200];
		snprintf(c->last_error, sizeof(c->last_error), "READ CAPACITY(16) failed: %s",
			 oneline(err, sizeof(err), iscsi_get_error(iscsi)));
		if (task) {
			scsi_free_scsi_task(task);
		}
		return -1;
	}
	uint32_t bs = rc->block_length;
	uint64_t bytes = (rc->returned_lba + 1) * (uint64_t)bs;
	scsi_free_scsi_task(task);
	if (bs == 0 || bs > BLOCK || BLOCK % bs != 0) {
		fprintf(stderr, "stamp: logical block size %" PRIu32 " does not divide 4096\n", bs);
		exit(EXIT_FATAL);
	}
	if (c->block_size != 0 && c->block_size != bs) {
		fprintf(stderr, "stamp: logical block size changed from %" PRIu32 " to %" PRIu32 "\n", c->block_size, bs);
		exit(EXIT_FATAL);
	}
	if (bytes / BLOCK < c->o->blocks) {
		fprintf(stderr, "stamp: the LUN holds %" PRIu64 " bytes, fewer than %" PRIu64 " blocks of 4 KiB\n", bytes,
			c->o->blocks);
		exit(EXIT_FATAL);
	}
	c->block_size = bs;
	return 0;
}

/* ready checks that the session's path serves the LUN now, as a
 * multipath initiator's path checker does: TEST UNIT READY answers GOOD
 * (after the unit attentions a new nexus sees). A path in an ALUA state
 * that cannot serve (standby, unavailable, transitioning: NOT READY) is a
 * failed login attempt, and the next portal is tried. */
static int ready(struct conn *c, struct iscsi_context *iscsi)
{
	for (int i = 0; i < 4; i++) {
		struct scsi_task *task = iscsi_testunitready_sync(iscsi, (int)c->o->lun);
		if (task != NULL && task->status == SCSI_STATUS_GOOD) {
			scsi_free_scsi_task(task);
			return 0;
		}
		int ua = task != NULL && task->status == SCSI_STATUS_CHECK_CONDITION &&
			 task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
		if (!ua) {
			char buf[256];
			snprintf(c->last_error, sizeof(c->last_error), "TEST UNIT READY: %s",
				 describe(c, task, buf, sizeof(buf)));
		}
		if (task) {
			scsi_free_scsi_task(task);
		}
		if (!ua) {
			return -1;
		}
	}
	return -1;
}

/* reconnect logs in through the next portal that accepts, round robin,
 * 50 ms between attempts. It returns 0 when connected, -1 when no portal
 * accepted since `since` for max-outage seconds, -2 at `until` (0: none). */
static int reconnect(struct conn *c, int64_t since, int64_t until)
{
	const struct opts *o = c->o;
	for (;;) {
		int64_t t = now_ns();
		if (t - since >= (int64_t)o->max_outage * 1000000000LL) {
			return -1;
		}
		if (until && t >= until) {
			return -2;
		}
		const char *portal = o->portals[c->next_portal];
		c->next_portal = (c->next_portal + 1) % o->nportals;
		struct iscsi_context *iscsi = iscsi_create_context(c->initiator);
		if (iscsi == NULL) {
			fprintf(stderr, "stamp: iscsi_create_context failed\n");
			exit(EXIT_FATAL);
		}
		iscsi_set_targetname(iscsi, o->target);
		iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
		iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
		/* libiscsi checks deadlines in whole seconds of time(): with T+1
		 * a command times out between T and T+1 s after it is sent. */
		iscsi_set_timeout(iscsi, (int)o->timeout + 1);
		iscsi_set_noautoreconnect(iscsi, 1);
		iscsi_set_tcp_syncnt(iscsi, 2);
		iscsi_set_tcp_user_timeout(iscsi, (int)o->timeout * 1000);
		if (iscsi_full_connect_sync(iscsi, portal, (int)o->lun) == 0 && ready(c, iscsi) == 0 && capacity(c, iscsi) == 0) {
			c->iscsi = iscsi;
			emit(c->log, "C %" PRId64 " %s\n", now_ns(), portal);
			return 0;
		}
		if (iscsi_get_error(iscsi)[0]) {
			char err[200];
			snprintf(c->last_error, sizeof(c->last_error), "%s: %s", portal,
				 oneline(err, sizeof(err), iscsi_get_error(iscsi)));
		}
		iscsi_destroy_context(iscsi);
		sleep_ns(RETRY_NS);
	}
}

static uint64_t lba_of(const struct conn *c, uint64_t block)
{
	return block * (BLOCK / c->block_size);
}

static int run(const struct opts *o)
{
	static unsigned char buf[BLOCK];
	struct conn c = {.o = o, .log = stdout};
	snprintf(c.initiator, sizeof(c.initiator), "iqn.2026-12.io.tandem:stamp-%" PRIu64, o->writer);
	uint64_t owned = (o->blocks - o->writer + o->writers - 1) / o->writers;
	uint64_t rng = o->seed ^ (o->writer + 1) * UINT64_C(0xd1b54a32d192ed03);
	uint64_t seq = 0, id = 0, ops = 0, acked = 0, failed = 0;
	int64_t start = now_ns(), end = start + (int64_t)o->seconds * 1000000000LL;
	int64_t last_ok = start, outage_max = 0, lost_at = start;
	int failing = 0, code = 0;
	char why[320], what[256];

	while (now_ns() < end) {
		if (c.iscsi == NULL) {
			int r = reconnect(&c, lost_at, end);
			if (r == -2) {
				break;
			}
			if (r == -1) {
				fprintf(stderr, "stamp: no portal accepted a login for %" PRIu64 " s (last error: %s)\n",
					o->max_outage, c.last_error);
				code = EXIT_OUTAGE;
				break;
			}
		}
		uint64_t block = o->writer + o->writers * (splitmix64(&rng) % owned);
		uint64_t lba = lba_of(&c, block);
		struct scsi_task *task;
		int ok;
		ops++;
		if (o->read_every && ops % o->read_every == 0) {
			id++;
			emit(stdout, "R %" PRIu64 " %" PRIu64 " %" PRId64 "\n", id, lba, now_ns());
			task = iscsi_read16_sync(c.iscsi, (int)o->lun, lba, BLOCK, (int)c.block_size, 0, 0, 0, 0, 0);
			ok = task && task->status == SCSI_STATUS_GOOD && task->datain.size == BLOCK;
			if (ok) {
				uint32_t w;
				uint64_t s;
				if (verify(task->datain.data, lba, &w, &s, what, sizeof(what)) == 0) {
					emit(stdout, "V %" PRIu64 " %" PRId64 " %" PRIu32 " %" PRIu64 "\n", id, now_ns(), w, s);
				} else {
					emit(stdout, "B %" PRIu64 " %" PRId64 " %s\n", id, now_ns(), what);
				}
			} else if (task && task->status == SCSI_STATUS_GOOD) {
				snprintf(why, sizeof(why), "short read: %d of %d bytes", task->datain.size, BLOCK);
				emit(stdout, "X %" PRIu64 " %" PRId64 " %s\n", id, now_ns(), why);
			} else {
				emit(stdout, "X %" PRIu64 " %" PRId64 " %s\n", id, now_ns(), describe(&c, task, why, sizeof(why)));
			}
		} else {
			int64_t t = now_ns();
			seq++;
			build(buf, lba, (uint32_t)o->writer, seq, t);
			emit(stdout, "W %" PRIu64 " %" PRIu64 " %" PRId64 "\n", seq, lba, t);
			task = iscsi_write16_sync(c.iscsi, (int)o->lun, lba, buf, BLOCK, (int)c.block_size, 0, 0, 0, 0, 0);
			ok = task && task->status == SCSI_STATUS_GOOD;
			if (ok) {
				acked++;
				emit(stdout, "A %" PRIu64 " %" PRId64 "\n", seq, now_ns());
			} else {
				failed++;
				emit(stdout, "F %" PRIu64 " %" PRId64 " %s\n", seq, now_ns(), describe(&c, task, why, sizeof(why)));
			}
		}
		int64_t t = now_ns();
		if (ok) {
			if (t - last_ok > outage_max) {
				outage_max = t - last_ok;
			}
			last_ok = t;
			failing = 0;
		} else {
			/* The context goes before the task: destroying it may
			 * still reach the task's queued PDUs. */
			lose(&c, why);
			lost_at = t;
			failing = 1;
		}
		if (task) {
			scsi_free_scsi_task(task);
		}
	}
	int64_t t = now_ns();
	if ((failing || code) && t - last_ok > outage_max) {
		outage_max = t - last_ok;
	}
	if (c.iscsi) {
		iscsi_logout_sync(c.iscsi);
		iscsi_destroy_context(c.iscsi);
	}
	emit(stdout, "E %" PRId64 " writes=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64 " reads=%" PRIu64 " outage_max_ms=%" PRId64 "\n",
	     t, seq, acked, failed, id, outage_max / 1000000);
	return code;
}

static int dump(const struct opts *o)
{
	struct conn c = {.o = o, .log = stderr};
	snprintf(c.initiator, sizeof(c.initiator), "iqn.2026-12.io.tandem:stamp-dump");
	int64_t last_ok = now_ns();
	char why[320], what[256];
	uint64_t b = 0;
	while (b < o->blocks) {
		if (c.iscsi == NULL && reconnect(&c, last_ok, 0) != 0) {
			fprintf(stderr, "stamp: dump: no portal accepted a login for %" PRIu64 " s (last error: %s)\n",
				o->max_outage, c.last_error);
			return EXIT_OUTAGE;
		}
		uint64_t n = o->blocks - b < DUMP_BLOCKS ? o->blocks - b : DUMP_BLOCKS;
		struct scsi_task *task = iscsi_read16_sync(c.iscsi, (int)o->lun, lba_of(&c, b), (uint32_t)(n * BLOCK),
							   (int)c.block_size, 0, 0, 0, 0, 0);
		if (task == NULL || task->status != SCSI_STATUS_GOOD || (uint64_t)task->datain.size != n * BLOCK) {
			if (task && task->status == SCSI_STATUS_GOOD) {
				snprintf(why, sizeof(why), "short read: %d of %" PRIu64 " bytes", task->datain.size, n * BLOCK);
			} else {
				describe(&c, task, why, sizeof(why));
			}
			lose(&c, why);
			if (task) {
				scsi_free_scsi_task(task);
			}
			if (now_ns() - last_ok >= (int64_t)o->max_outage * 1000000000LL) {
				fprintf(stderr, "stamp: dump: no read succeeded for %" PRIu64 " s (last: %s)\n", o->max_outage, why);
				return EXIT_OUTAGE;
			}
			sleep_ns(RETRY_NS);
			continue;
		}
		for (uint64_t i = 0; i < n; i++) {
			uint64_t lba = lba_of(&c, b + i);
			uint32_t w;
			uint64_t s;
			if (verify(task->datain.data + i * BLOCK, lba, &w, &s, what, sizeof(what)) == 0) {
				emit(stdout, "S %" PRIu64 " %" PRIu32 " %" PRIu64 "\n", lba, w, s);
			} else {
				emit(stdout, "B %" PRIu64 " %s\n", lba, what);
			}
		}
		scsi_free_scsi_task(task);
		last_ok = now_ns();
		b += n;
	}
	if (c.iscsi) {
		iscsi_logout_sync(c.iscsi);
		iscsi_destroy_context(c.iscsi);
	}
	return 0;
}

static void usage(const char *msg, ...)
{
	va_list ap;
	fprintf(stderr, "stamp: ");
	va_start(ap, msg);
	vfprintf(stderr, msg, ap);
	va_end(ap);
	fprintf(stderr, "\nusage:\n"
			"  stamp run  --portals H:P[,H:P...] --target IQN [--lun 0] --writer W --writers K\n"
			"             --blocks N --seconds S [--read-every R] [--timeout T] [--max-outage O] [--seed X]\n"
			"  stamp dump --portals H:P[,H:P...] --target IQN [--lun 0] --blocks N [--timeout T] [--max-outage O]\n");
	exit(EXIT_USAGE);
}

/* number parses a whole decimal flag value in [min, max]. */
static uint64_t number(const char *flag, const char *v, uint64_t min, uint64_t max)
{
	char *end;
	if (*v < '0' || *v > '9') {
		usage("%s %s: not a number", flag, v);
	}
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno != 0 || *end != 0 || n < min || n > max) {
		usage("%s %s: want a number from %" PRIu64 " to %" PRIu64, flag, v, min, max);
	}
	return n;
}

static void parse(int argc, char **argv, struct opts *o)
{
	if (argc < 2) {
		usage("no command");
	}
	if (strcmp(argv[1], "dump") == 0) {
		o->dump = 1;
	} else if (strcmp(argv[1], "run") != 0) {
		usage("unknown command %s", argv[1]);
	}
	o->timeout = 5;
	o->max_outage = 30;
	o->seed = 1;
	unsigned seen = 0;
	static const char *flags[] = {"--portals", "--target",   "--lun",     "--writer",     "--writers", "--blocks",
				      "--seconds", "--read-every", "--timeout", "--max-outage", "--seed"};
	const int nflags = sizeof(flags) / sizeof(flags[0]);
	const unsigned dump_ok = 1u << 0 | 1u << 1 | 1u << 2 | 1u << 5 | 1u << 8 | 1u << 9;
	for (int i = 2; i < argc; i += 2) {
		int f;
		for (f = 0; f < nflags && strcmp(argv[i], flags[f]) != 0; f++) {
		}
		if (f == nflags) {
			usage("unknown flag %s", argv[i]);
		}
		if (o->dump && !(dump_ok >> f & 1)) {
			usage("%s is not a dump flag", argv[i]);
		}
		if (seen >> f & 1) {
			usage("%s given twice", argv[i]);
		}
		seen |= 1u << f;
		if (i + 1 >= argc) {
			usage("%s needs a value", argv[i]);
		}
		char *v = argv[i + 1];
		switch (f) {
		case 0:
			for (char *p = strtok(v, ","); p; p = strtok(NULL, ",")) {
				if (o->nportals == MAX_PORTALS) {
					usage("more than %d portals", MAX_PORTALS);
				}
				if (strchr(p, ':') == NULL) {
					usage("portal %s is not HOST:PORT", p);
				}
				o->portals[o->nportals++] = p;
			}
			break;
		case 1:
			if (strncmp(v, "iqn.", 4) != 0 && strncmp(v, "eui.", 4) != 0 && strncmp(v, "naa.", 4) != 0) {
				usage("--target %s is not an iSCSI name", v);
			}
			o->target = v;
			break;
		case 2: o->lun = number(argv[i], v, 0, 16383); break;
		case 3: o->writer = number(argv[i], v, 0, UINT32_MAX); break;
		case 4: o->writers = number(argv[i], v, 1, UINT32_MAX); break;
		case 5: o->blocks = number(argv[i], v, 1, MAX_BLOCKS); break;
		case 6: o->seconds = number(argv[i], v, 1, 86400 * 365); break;
		case 7: o->read_every = number(argv[i], v, 0, UINT32_MAX); break;
		case 8: o->timeout = number(argv[i], v, 1, 3600); break;
		case 9: o->max_outage = number(argv[i], v, 1, 86400); break;
		case 10: o->seed = number(argv[i], v, 0, UINT64_MAX); break;
		}
	}
	if (o->nportals == 0) {
		usage("--portals is required");
	}
	if (o->target == NULL) {
		usage("--target is required");
	}
	if (!(seen >> 5 & 1)) {
		usage("--blocks is required");
	}
	if (o->dump) {
		return;
	}
	for (int f = 3; f <= 6; f++) {
		if (!(seen >> f & 1)) {
			usage("%s is required", flags[f]);
		}
	}
	if (o->writer >= o->writers) {
		usage("--writer %" PRIu64 " is not below --writers %" PRIu64, o->writer, o->writers);
	}
	if (o->writer >= o->blocks) {
		usage("writer %" PRIu64 " owns none of %" PRIu64 " blocks", o->writer, o->blocks);
	}
}

int main(int argc, char **argv)
{
	struct opts o = {0};
	parse(argc, argv, &o);
	/* A node that drops the connection must not kill the writer. */
	signal(SIGPIPE, SIG_IGN);
	return o.dump ? dump(&o) : run(&o);
}
