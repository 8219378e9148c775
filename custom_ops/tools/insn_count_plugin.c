// insn_count_plugin: a QEMU TCG plugin (qemu-user) that counts the guest instructions executed between
// marker system calls, used by tools/bench_arm_insn.py to measure kernels under qemu-aarch64.
//
// Build (host compiler, not the cross one):  cc -O2 -shared -fPIC -o libinsn_count.so insn_count_plugin.c
// Run:  qemu-aarch64 -plugin ./libinsn_count.so,out=counts.jsonl ... program
//
// The guest program brackets what it wants measured with `syscall(MBQ_MARK, cmd, a, b, c)`
// (MBQ_MARK = 0x4d4251, "MBQ"; Linux returns ENOSYS for it, so the same binary runs unchanged without
// the plugin):
//   cmd 1 (begin, tag a):         zero every translation block's execution counter
//   cmd 2 (end, tag a):           append one JSON line to `out`: instructions executed since the begin,
//                                 split by the address ranges declared so far, and per mnemonic;
//                                 "exclusive" (see below) and the live thread count
//   cmd 3 (range, id a, [b, c)):  declare guest address range id a (e.g. a shared library's code)
// At exit it appends {"exit": true, "total_insns": every instruction the guest executed, ...}.
//
// Counting: every translation block (TB) gets its own 64-bit counter, incremented inline by TCG code
// at each entry to the block (no helper call); at the end marker, instructions = sum over blocks of
// (instructions in the block) x (entries). A block left early by an exception is counted whole (a
// guest fault, not something a kernel does). The counters are shared by all guest threads and not
// atomic: measure one working thread (ORT intra-op threads = 1). Each window record says whether it is
// "exclusive": every other live thread stayed inside one system call (e.g. a futex wait) from the begin
// to the end marker, so it executed no guest instruction in the window and the count is the marking
// thread's alone (tracked from the system-call entry/return callbacks and thread start/exit). The begin
// marker first waits (up to 10 s, "waited_ms") until every other thread is inside a system call.
//
// Mnemonics come from QEMU's disassembler (capstone in Debian's build) at translation time; the
// dot-product family (SDOT/UDOT/USDOT/SUDOT, SMMLA/UMMLA/USMMLA) is also recognised from the
// encoding, so an older disassembler that prints them as unknown still shows them.
//
// Only the handful of plugin-API declarations used are written out below (QEMU's
// include/qemu/qemu-plugin.h, plugin API version 1 as in QEMU 7.2; the functions are exported by the
// qemu-aarch64 binary itself).

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- QEMU plugin API (subset) ----
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void* userdata);
typedef void (*qemu_plugin_vcpu_simple_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*qemu_plugin_vcpu_syscall_ret_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_idx, int64_t num,
                                                  int64_t ret);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op, void* ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_vcpu_syscall_ret_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_ret_cb_t cb);
void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_vcpu_exit_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_simple_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void* userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb* tb);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb* tb, size_t idx);
const void* qemu_plugin_insn_data(const struct qemu_plugin_insn* insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn* insn);
char* qemu_plugin_insn_disas(const struct qemu_plugin_insn* insn);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
// ---- end of the API subset ----

#define MBQ_MARK 0x4d4251
#define MAX_RANGES 16

typedef struct {
  uint64_t count;  // entries since the last begin marker (written by TCG-generated code)
  uint64_t vaddr;
  uint32_t n_insns;
  uint16_t* mnemonic;  // n_insns mnemonic ids
} Block;

static Block** blocks;
static size_t n_blocks, cap_blocks;

// Mnemonic table: ids into names[], found through an open-addressing hash.
#define HASH_SIZE 4096
static char* names[HASH_SIZE];
static int hash_slot[HASH_SIZE];  // slot -> id + 1 (0: empty)
static int n_names;

static struct {
  uint64_t id, lo, hi;
} ranges[MAX_RANGES];
static int n_ranges;
static FILE* out;
static uint64_t translated_blocks;
// Guest threads (one vCPU each in qemu-user). The counters are shared by all threads, so a window is only
// attributable to the marking thread when every other thread spent the whole window inside one system call
// (blocked in a futex wait, typically): a thread inside a system call executes no guest instructions.
// Such a window is reported "exclusive": true.
#define MAX_VCPUS 256
static struct {
  int live, in_syscall;
  uint64_t returns;  // system calls completed
} vcpus[MAX_VCPUS];
static int threads_live, threads_started;
static int window_open, window_clean;
static uint64_t returns_at_begin[MAX_VCPUS];
static int wait_ticks;  // 0.2 ms ticks the begin marker waited for the other threads
static uint64_t all_insns;  // every instruction the guest executed (a second inline counter per block)

static int mnemonic_id(const char* s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; ++i) h = (h ^ (uint8_t)s[i]) * 16777619u;
  for (uint32_t probe = 0; probe < HASH_SIZE; ++probe) {
    const uint32_t slot = (h + probe) & (HASH_SIZE - 1);
    const int id = hash_slot[slot] - 1;
    if (id < 0) {
      if (n_names >= HASH_SIZE - 1) return 0;  // table full: lump into id 0
      char* name = malloc(len + 1);
      memcpy(name, s, len);
      name[len] = 0;
      names[n_names] = name;
      hash_slot[slot] = ++n_names;
      return n_names - 1;
    }
    if (strlen(names[id]) == len && memcmp(names[id], s, len) == 0) return id;
  }
  return 0;
}

// The dot-product / matrix-multiply-accumulate integer family, from the A64 encoding.
static const char* dot_family(uint32_t w) {
  if ((w & 0x9f20fc00u) == 0x0e009400u && ((w >> 22) & 3) == 2) return (w >> 29) & 1 ? "udot" : "sdot";
  if ((w & 0x9f00f400u) == 0x0f00e000u && ((w >> 22) & 3) == 2) return (w >> 29) & 1 ? "udot" : "sdot";
  if ((w & 0xbfe0fc00u) == 0x0e809c00u) return "usdot";
  if ((w & 0xbfc0f400u) == 0x0f80f000u) return "usdot";  // by element
  if ((w & 0xbfc0f400u) == 0x0f00f000u) return "sudot";  // by element
  if ((w & 0xffe0fc00u) == 0x4e80a400u) return "smmla";
  if ((w & 0xffe0fc00u) == 0x6e80a400u) return "ummla";
  if ((w & 0xffe0fc00u) == 0x4e80ac00u) return "usmmla";
  return NULL;
}

static int classify(const struct qemu_plugin_insn* insn) {
  if (qemu_plugin_insn_size(insn) == 4) {
    uint32_t w;
    memcpy(&w, qemu_plugin_insn_data(insn), 4);
    const char* dot = dot_family(w);
    if (dot) return mnemonic_id(dot, strlen(dot));
  }
  char* text = qemu_plugin_insn_disas(insn);
  if (!text) return mnemonic_id("?", 1);
  const char* s = text;
  while (*s == ' ' || *s == '\t') ++s;
  size_t len = strcspn(s, " \t");
  const int id = len ? mnemonic_id(s, len) : mnemonic_id("?", 1);
  free(text);  // g_malloc'd; glib allocates with the system malloc
  return id;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  Block* b = calloc(1, sizeof(Block));
  b->vaddr = qemu_plugin_tb_vaddr(tb);
  b->n_insns = (uint32_t)n;
  b->mnemonic = malloc((n ? n : 1) * sizeof(uint16_t));
  for (size_t i = 0; i < n; ++i) b->mnemonic[i] = (uint16_t)classify(qemu_plugin_tb_get_insn(tb, i));
  if (n_blocks == cap_blocks) {
    cap_blocks = cap_blocks ? 2 * cap_blocks : 65536;
    blocks = realloc(blocks, cap_blocks * sizeof(Block*));
  }
  blocks[n_blocks++] = b;
  ++translated_blocks;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->count, 1);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &all_insns, n);
}

// Whether every live thread but `self` is inside the system call it was in at the begin marker.
static int others_asleep(unsigned int self, int at_begin) {
  for (unsigned int v = 0; v < MAX_VCPUS; ++v) {
    if (v == self || !__atomic_load_n(&vcpus[v].live, __ATOMIC_ACQUIRE)) continue;
    if (!__atomic_load_n(&vcpus[v].in_syscall, __ATOMIC_ACQUIRE)) return 0;
    const uint64_t r = __atomic_load_n(&vcpus[v].returns, __ATOMIC_ACQUIRE);
    if (at_begin)
      returns_at_begin[v] = r;
    else if (r != returns_at_begin[v])
      return 0;
  }
  return 1;
}

static void report(uint64_t tag, int exclusive) {
  uint64_t total = 0, in_range[MAX_RANGES] = {0};
  uint64_t* per_name = calloc(HASH_SIZE, sizeof(uint64_t));
  for (size_t i = 0; i < n_blocks; ++i) {
    const Block* b = blocks[i];
    if (!b->count) continue;
    const uint64_t insns = b->count * b->n_insns;
    total += insns;
    for (int r = 0; r < n_ranges; ++r)
      if (b->vaddr >= ranges[r].lo && b->vaddr < ranges[r].hi) in_range[r] += insns;
    for (uint32_t j = 0; j < b->n_insns; ++j) per_name[b->mnemonic[j]] += b->count;
  }
  fprintf(out,
          "{\"tag\": %llu, \"insns\": %llu, \"exclusive\": %s, \"threads_live\": %d, \"waited_ms\": %.1f, "
          "\"ranges\": {",
          (unsigned long long)tag, (unsigned long long)total, exclusive ? "true" : "false", threads_live,
          wait_ticks * 0.2);
  for (int r = 0; r < n_ranges; ++r)
    fprintf(out, "%s\"%llu\": %llu", r ? ", " : "", (unsigned long long)ranges[r].id,
            (unsigned long long)in_range[r]);
  fprintf(out, "}, \"mnemonics\": {");
  int first = 1;
  for (int i = 0; i < n_names; ++i) {
    if (!per_name[i]) continue;
    fprintf(out, "%s\"%s\": %llu", first ? "" : ", ", names[i], (unsigned long long)per_name[i]);
    first = 0;
  }
  fprintf(out, "}}\n");
  fflush(out);
  free(per_name);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t cmd, uint64_t a,
                       uint64_t b, uint64_t c, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu, (void)a5, (void)a6, (void)a7, (void)a8;
  if (vcpu < MAX_VCPUS) __atomic_store_n(&vcpus[vcpu].in_syscall, 1, __ATOMIC_RELEASE);
  if (num != MBQ_MARK) return;
  if (cmd == 1) {
    // Let the other threads settle first: wait (up to 10 s) until each sits in a system call.
    const struct timespec tick = {0, 200000};
    for (wait_ticks = 0; wait_ticks < 50000 && vcpu < MAX_VCPUS && !others_asleep(vcpu, 1); ++wait_ticks)
      nanosleep(&tick, NULL);
    window_clean = vcpu < MAX_VCPUS && others_asleep(vcpu, 1);
    for (size_t i = 0; i < n_blocks; ++i) blocks[i]->count = 0;
    __atomic_store_n(&window_open, 1, __ATOMIC_RELEASE);
  } else if (cmd == 2) {
    const int exclusive = window_clean && vcpu < MAX_VCPUS && others_asleep(vcpu, 0);
    __atomic_store_n(&window_open, 0, __ATOMIC_RELEASE);
    report(a, exclusive);
  } else if (cmd == 3 && n_ranges < MAX_RANGES) {
    ranges[n_ranges].id = a;
    ranges[n_ranges].lo = b;
    ranges[n_ranges].hi = c;
    ++n_ranges;
  }
}

static void on_syscall_ret(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, int64_t ret) {
  (void)id, (void)num, (void)ret;
  if (vcpu >= MAX_VCPUS) return;
  __atomic_add_fetch(&vcpus[vcpu].returns, 1, __ATOMIC_ACQ_REL);
  __atomic_store_n(&vcpus[vcpu].in_syscall, 0, __ATOMIC_RELEASE);
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu) {
  (void)id;
  __atomic_add_fetch(&threads_live, 1, __ATOMIC_ACQ_REL);
  __atomic_add_fetch(&threads_started, 1, __ATOMIC_ACQ_REL);
  if (__atomic_load_n(&window_open, __ATOMIC_ACQUIRE) || vcpu >= MAX_VCPUS) window_clean = 0;  // it runs
  if (vcpu < MAX_VCPUS) __atomic_store_n(&vcpus[vcpu].live, 1, __ATOMIC_RELEASE);
}

static void vcpu_exit(qemu_plugin_id_t id, unsigned int vcpu) {
  (void)id;
  __atomic_sub_fetch(&threads_live, 1, __ATOMIC_ACQ_REL);
  if (vcpu < MAX_VCPUS) __atomic_store_n(&vcpus[vcpu].live, 0, __ATOMIC_RELEASE);
}

static void at_exit(qemu_plugin_id_t id, void* p) {
  (void)id, (void)p;
  fprintf(out, "{\"exit\": true, \"total_insns\": %llu, \"translated_blocks\": %llu, \"threads_started\": %d}\n",
          (unsigned long long)all_insns, (unsigned long long)translated_blocks, threads_started);
  fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info,
                                                               int argc, char** argv) {
  (void)info;
  const char* path = NULL;
  for (int i = 0; i < argc; ++i)
    if (strncmp(argv[i], "out=", 4) == 0) path = argv[i] + 4;
  out = path ? fopen(path, "w") : stderr;
  if (!out) {
    fprintf(stderr, "insn_count_plugin: cannot open %s\n", path);
    return -1;
  }
  mnemonic_id("?", 1);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_vcpu_syscall_ret_cb(id, on_syscall_ret);
  qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
  qemu_plugin_register_vcpu_exit_cb(id, vcpu_exit);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
