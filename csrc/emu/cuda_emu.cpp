// The fibre scheduler behind csrc/emu/cuda_emu.h: blocks over OpenMP threads, a block's threads as
// fibres on one OS thread, barriers and warp exchanges as points where a fibre hands control back.
//
// A fibre runs until it blocks (at __syncthreads, at a warp-synchronous call) or ends. When every
// fibre of the block has blocked, the scheduler releases what the model allows: the lanes of a warp
// whose warp-synchronous call every lane of its mask has reached, else the whole block once every
// live thread waits at __syncthreads. Anything else is a deadlock on a GPU too, and is reported.
// Warp exchanges use two buffers by the parity of the call, so a lane that runs ahead into the next
// exchange never overwrites a value a slower lane still has to read.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace gls_emu {
namespace {

constexpr std::size_t kStackBytes = 64 * 1024;  // per fibre; the kernels keep a few hundred bytes of locals
constexpr unsigned kMaxThreads = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr std::size_t kMaxDynamicShared = 48 * 1024;  // without the opt-in attribute, as on every GPU since sm_70

enum class State { kReady, kWarpWait, kBlockWait, kDone };

// ---- context switching ------------------------------------------------------------------------------

#if defined(__x86_64__)
// switch_to(save, next): push the callee-saved registers and the SSE/x87 control words, store the stack
// pointer in *save, load `next`, restore, return into the other context. A new fibre's stack is laid out
// as if it had been switched away from just before entering fibre_entry (r12 = argument, r13 = function).
extern "C" void gls_emu_switch(void** save, void* next);
extern "C" void gls_emu_start();
asm(R"(
  .text
  .globl gls_emu_switch
  .hidden gls_emu_switch
  .type gls_emu_switch,@function
gls_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gls_emu_switch, .-gls_emu_switch
  .globl gls_emu_start
  .hidden gls_emu_start
  .type gls_emu_start,@function
gls_emu_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size gls_emu_start, .-gls_emu_start
)");

struct Context {
  void* sp = nullptr;
};

void make_context(Context& c, char* stack, std::size_t bytes, void (*fn)(void*), void* arg) {
  auto* top = reinterpret_cast<std::uint64_t*>((reinterpret_cast<std::uintptr_t>(stack + bytes)) & ~std::uintptr_t(15));
  std::uint64_t* sp = top - 10;  // 80 bytes: control words, six registers, return address, padding
  std::uint32_t mxcsr;
  std::uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = mxcsr | (std::uint64_t(fpucw) << 32);
  sp[1] = sp[2] = 0;                              // r15, r14
  sp[3] = reinterpret_cast<std::uint64_t>(fn);    // r13
  sp[4] = reinterpret_cast<std::uint64_t>(arg);   // r12
  sp[5] = sp[6] = 0;                              // rbx, rbp
  sp[7] = reinterpret_cast<std::uint64_t>(&gls_emu_start);
  sp[8] = sp[9] = 0;
  c.sp = sp;
}

void switch_context(Context& from, Context& to) { gls_emu_switch(&from.sp, to.sp); }
#else
// Elsewhere: POSIX ucontext (slower: a signal-mask system call per switch).
struct Context {
  ucontext_t uc;
};

void make_context(Context& c, char* stack, std::size_t bytes, void (*fn)(void*), void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  const auto p = reinterpret_cast<std::uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(+[](unsigned hi, unsigned lo, void (*f)(void*)) {
                f(reinterpret_cast<void*>((std::uintptr_t(hi) << 32) | lo));
              }),
              3, unsigned(p >> 32), unsigned(p), fn);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---- one OS thread's block runner ---------------------------------------------------------------------

struct Fibre {
  Context ctx;
  State state = State::kReady;
  uint3 idx{};
  unsigned mask = 0;          // of the pending warp-synchronous call
  std::uint32_t parity = 0;   // warp-synchronous calls made so far, mod 2
};

class BlockRunner {
 public:
  // Runs one block; returns an empty string, or what went wrong.
  std::string run(const LaunchConfig& cfg, uint3 block, void (*body)(void*), void* ctx) {
    const unsigned n = cfg.block.x * cfg.block.y * cfg.block.z;
    reserve(n);
    if (dynamic_.size() < cfg.dynamic_shared + 16) dynamic_.assign(cfg.dynamic_shared + 16, 0);  // + alignment
    blockIdx = block;
    blockDim = cfg.block;
    gridDim = cfg.grid;
    body_ = body;
    body_ctx_ = ctx;
    error_.clear();
    n_ = n;
    for (unsigned t = 0; t < n; ++t) {
      Fibre& f = fibres_[t];
      f.state = State::kReady;
      f.idx = uint3{t % cfg.block.x, t / cfg.block.x % cfg.block.y, t / (cfg.block.x * cfg.block.y)};
      f.parity = 0;
      make_context(f.ctx, stack(t), kStackBytes, &BlockRunner::entry, this);
    }
    for (;;) {
      for (unsigned t = 0; t < n && error_.empty(); ++t)
        if (fibres_[t].state == State::kReady) resume(t);
      if (!error_.empty()) return error_;
      bool released = false;
      for (unsigned w = 0; w * kWarpSize < n && error_.empty(); ++w) released |= release_warp(w);
      if (!error_.empty()) return error_;
      if (released) continue;
      unsigned done = 0, at_barrier = 0;
      for (unsigned t = 0; t < n; ++t) {
        done += fibres_[t].state == State::kDone;
        at_barrier += fibres_[t].state == State::kBlockWait;
      }
      if (done == n) return {};
      if (done + at_barrier < n) return describe_deadlock();
      for (unsigned t = 0; t < n; ++t)
        if (fibres_[t].state == State::kBlockWait) fibres_[t].state = State::kReady;
    }
  }

  unsigned char* dynamic_shared() {
    return reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(dynamic_.data()) + 15) & ~std::uintptr_t(15));
  }

  void block_wait() { suspend(State::kBlockWait); }

  std::uint64_t exchange(unsigned mask, std::uint64_t bits, int src) {
    Fibre& f = fibres_[current_];
    const int lane = static_cast<int>(current_ % kWarpSize);
    const unsigned base = current_ - lane;
    if (!(mask >> lane & 1u)) fail("lane " + std::to_string(lane) + " made a warp-synchronous call whose mask " + hex(mask) + " leaves it out");
    const unsigned par = f.parity;
    slots_[2 * base + par * kWarpSize + lane] = bits;
    f.mask = mask;
    suspend(State::kWarpWait);
    f.parity ^= 1u;
    if (src < 0 || src >= kWarpSize || !(mask >> src & 1u)) {
      fail("a shuffle of lane " + std::to_string(lane) + " reads lane " + std::to_string(src) + ", outside its mask " + hex(mask));
      return bits;
    }
    return slots_[2 * base + par * kWarpSize + src];
  }

  BlockRunner() = default;
  BlockRunner(const BlockRunner&) = delete;
  BlockRunner& operator=(const BlockRunner&) = delete;
  ~BlockRunner() {
    if (stacks_ != nullptr) munmap(stacks_, stack_stride_ * kMaxThreads);
  }

  static BlockRunner& here() {
    thread_local BlockRunner runner;
    return runner;
  }

 private:
  static void entry(void* self) {
    auto* r = static_cast<BlockRunner*>(self);
    r->body_(r->body_ctx_);
    r->fibres_[r->current_].state = State::kDone;
    switch_context(r->fibres_[r->current_].ctx, r->main_);
  }

  void resume(unsigned t) {
    current_ = t;
    threadIdx = fibres_[t].idx;
    switch_context(main_, fibres_[t].ctx);
  }

  void suspend(State s) {
    Fibre& f = fibres_[current_];
    f.state = s;
    switch_context(f.ctx, main_);
  }

  // Releases warp w's lanes if their warp-synchronous call is complete; an error if it never can be.
  bool release_warp(unsigned w) {
    const unsigned base = w * kWarpSize, lanes = std::min<unsigned>(kWarpSize, n_ - base);
    int first = -1;
    for (unsigned l = 0; l < lanes; ++l)
      if (fibres_[base + l].state == State::kWarpWait) {
        first = static_cast<int>(l);
        break;
      }
    if (first < 0) return false;
    const unsigned mask = fibres_[base + first].mask;
    for (unsigned l = 0; l < kWarpSize; ++l) {
      const bool named = mask >> l & 1u;
      const auto who = [&] { return "warp " + std::to_string(w) + " lane " + std::to_string(l); };  // for errors only
      if (named && l >= lanes) return fail("a warp-synchronous call with mask " + hex(mask) + " names " + who() + ", which does not exist (" + std::to_string(n_) + " threads a block)");
      if (l >= lanes) continue;
      const Fibre& f = fibres_[base + l];
      if (f.state == State::kWarpWait && f.mask != mask) return fail(who() + " passed mask " + hex(f.mask) + " where lane " + std::to_string(first) + " passed " + hex(mask));
      if (!named && f.state == State::kWarpWait) return fail(who() + " is not in the mask " + hex(mask) + " of the call it waits in");
      if (named && f.state == State::kDone) return fail("a warp-synchronous call with mask " + hex(mask) + " waits for " + who() + ", which has exited");
      if (named && f.state == State::kBlockWait) return fail("divergent synchronisation: " + who() + " waits at __syncthreads while its warp's mask " + hex(mask) + " waits for it in a warp-synchronous call");
    }
    for (unsigned l = 0; l < lanes; ++l)
      if (mask >> l & 1u) fibres_[base + l].state = State::kReady;
    return true;
  }

  std::string describe_deadlock() {
    unsigned warp_wait = 0, block_wait = 0, done = 0;
    for (unsigned t = 0; t < n_; ++t) {
      warp_wait += fibres_[t].state == State::kWarpWait;
      block_wait += fibres_[t].state == State::kBlockWait;
      done += fibres_[t].state == State::kDone;
    }
    return "deadlock: " + std::to_string(block_wait) + " threads wait at __syncthreads, " + std::to_string(warp_wait) +
           " in warp-synchronous calls, " + std::to_string(done) + " have exited";
  }

  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }

  static std::string hex(unsigned v) {
    std::ostringstream s;
    s << "0x" << std::hex << v;
    return s.str();
  }

  void reserve(unsigned n) {
    if (n <= fibres_.size()) return;
    fibres_.resize(kMaxThreads);
    slots_.assign(2 * kMaxThreads, 0);
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), each = kStackBytes + page;
    void* mem = mmap(nullptr, each * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map fibre stacks");
    stacks_ = static_cast<char*>(mem);
    for (unsigned t = 0; t < kMaxThreads; ++t) mprotect(stacks_ + t * each, page, PROT_NONE);  // overflow guard
    stack_stride_ = each;
    guard_ = page;
  }

  char* stack(unsigned t) { return stacks_ + t * stack_stride_ + guard_; }

  std::vector<Fibre> fibres_;
  std::vector<std::uint64_t> slots_;  // per warp: two buffers of 32 lanes
  std::vector<unsigned char> dynamic_;
  char* stacks_ = nullptr;
  std::size_t stack_stride_ = 0, guard_ = 0;
  Context main_;
  unsigned n_ = 0, current_ = 0;
  void (*body_)(void*) = nullptr;
  void* body_ctx_ = nullptr;
  std::string error_;
};

std::string check_config(const LaunchConfig& c) {
  const dim3 b = c.block, g = c.grid;
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0) return "invalid configuration: an empty grid or block";
  if (threads > kMaxThreads || b.z > kMaxBlockZ)
    return "invalid configuration: " + std::to_string(threads) + " threads a block (at most 1024, blockDim.z at most 64)";
  if (g.x > 2147483647u || g.y > kMaxGridYZ || g.z > kMaxGridYZ) return "invalid configuration: grid axes past (2^31 - 1, 65535, 65535)";
  if (c.dynamic_shared > kMaxDynamicShared) return "invalid configuration: " + std::to_string(c.dynamic_shared) + " bytes of dynamic shared memory (at most 48 KiB)";
  return {};
}

}  // namespace

void run_grid(const char* kernel, const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  const auto where = [&] {
    std::ostringstream s;
    s << "CUDA emulation: launch of " << kernel << " <<<(" << cfg.grid.x << ", " << cfg.grid.y << ", " << cfg.grid.z << "), ("
      << cfg.block.x << ", " << cfg.block.y << ", " << cfg.block.z << "), " << cfg.dynamic_shared << ">>>: ";
    return s.str();
  };
  if (const std::string bad = check_config(cfg); !bad.empty()) throw std::runtime_error(where() + bad);
  const long long blocks = 1ll * cfg.grid.x * cfg.grid.y * cfg.grid.z;
  std::mutex m;
  std::string first;
  long long first_block = -1;
#pragma omp parallel for schedule(dynamic, 1)
  for (long long i = 0; i < blocks; ++i) {
    const uint3 b{unsigned(i % cfg.grid.x), unsigned(i / cfg.grid.x % cfg.grid.y), unsigned(i / (1ll * cfg.grid.x * cfg.grid.y))};
    const std::string err = BlockRunner::here().run(cfg, b, body, ctx);
    if (!err.empty()) {
      const std::lock_guard<std::mutex> lock(m);
      if (first_block < 0 || i < first_block) {
        first_block = i;
        first = err;
      }
    }
  }
  if (first_block >= 0) {
    const uint3 b{unsigned(first_block % cfg.grid.x), unsigned(first_block / cfg.grid.x % cfg.grid.y),
                  unsigned(first_block / (1ll * cfg.grid.x * cfg.grid.y))};
    throw std::runtime_error(where() + "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + "): " + first);
  }
}

unsigned char* dynamic_shared() { return BlockRunner::here().dynamic_shared(); }

void sync_block() { BlockRunner::here().block_wait(); }

std::uint64_t warp_exchange(unsigned mask, std::uint64_t bits, int src) { return BlockRunner::here().exchange(mask, bits, src); }

}  // namespace gls_emu
