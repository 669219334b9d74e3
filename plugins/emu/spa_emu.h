// Host emulation of the CUDA execution model, just wide enough to run the spa
// kernels (plugins/kernels/*.cu) on a CPU: the same sources, compiled by g++
// with -DSPA_EMULATE, run block by block with one fiber (its own stack and
// context) per CUDA thread, all on the calling host thread.
//
// Why: the kernels' index arithmetic (fragment layouts, the cp.async
// pipeline, split-K, the GQSA warp scan) can be checked on machines without a
// GPU, under AddressSanitizer (out-of-bounds global or shared memory) or
// ThreadSanitizer (a missing __syncthreads). What it cannot tell: speed, and
// any fact about the hardware that this file states wrongly. The tensor-core
// fragment layouts below are written from the PTX ISA's descriptions of
// mma.m16n8k16 and mma.sp::ordered_metadata.m16n8k32 (.f16/.bf16), not from
// the kernels, so a kernel that disagrees with the ISA fails here; the one
// reading of the ISA that is not certain (which lane of a quad holds which
// half of the sparse metadata) is marked where it is used.
//
// Semantics kept on purpose:
// * cp.async copies land at the cp.async.wait_group that retires them, not
//   before: reading a stage before waiting for it sees stale bytes.
// * Shared memory starts as 0x7f bytes (NaN in FP16/BF16/FP32), so a read of
//   a byte no copy wrote poisons the result.
// * mma / shfl need all 32 lanes of the warp (.sync.aligned, full masks);
//   fewer is reported as a fault.
// * Dynamic shared memory above 48 KB needs cudaFuncSetAttribute, and above
//   163 KB (sm_80's limit; sm_90 allows 227 KB) it is refused.
// A fault fails the launch (cudaGetLastError returns cudaErrorLaunchFailure)
// and spa_emu::last_fault() says why.
// * A thread runs until it waits at a barrier (__syncthreads, or a warp
//   collective: mma, shfl, ballot, ldmatrix), then the next thread of the
//   block runs, round robin. A switch stays in user space (below, "fibers"),
//   not a wake-up through the operating system's scheduler. A round in which no
//   thread arrives anywhere is a deadlock (barriers that cannot complete)
//   and fails the launch instead of hanging.
// * Each fiber is its own thread to the sanitizers (ASan's and TSan's fiber
//   interfaces), and a switch orders nothing for ThreadSanitizer: only the
//   barriers do (release/acquire atomics), so it still sees every race.
// * Blocks run one after the other: integer atomics and __threadfence are
//   exact, but no interleaving of blocks is ever tried (the last block of a
//   grid is always the last to arrive).
#pragma once

#ifndef SPA_EMULATE
#error "spa_emu.h emulates CUDA on the host; compile with -DSPA_EMULATE (see plugins/emu/README.md)"
#endif

#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace spa_emu {

constexpr int kWarpSize = 32;
constexpr size_t kDefaultSmem = 48 * 1024;
constexpr size_t kMaxSmem = 163 * 1024;  // sm_80 opt-in limit (sm_90: 227 KB)

struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Copy {
  unsigned char* dst;
  const unsigned char* src;  // nullptr: zero-fill
  int bytes;                 // 4, 8 or 16
};

struct Block;
struct Warp;
struct ThreadState;

// ---- fibers -------------------------------------------------------------------
// A context switch. On x86-64 it is spa_emu_switch (emu_runtime.cpp): push the
// callee-saved registers, store the stack pointer, load the other fiber's and
// pop its registers: no system call, and none of the sanitizers' swapcontext
// interceptors (AddressSanitizer's clears the shadow of the whole target stack
// at every switch). Elsewhere, swapcontext.
#if defined(__x86_64__)
#define SPA_EMU_ASM_SWITCH 1
extern "C" void spa_emu_switch(void** save, void* load);
struct Context {
  void* sp = nullptr;
};
using Resume = void*;  // what a switch to a context needs (read before the switch)
inline Resume resume_of(Context& context) { return context.sp; }
inline void switch_context(Context& from, Resume to) { spa_emu_switch(&from.sp, to); }
// A context that starts `entry` (which never returns) on the stack [base, base + bytes):
// the six registers spa_emu_switch pops, then entry as its return address, then a null
// return address for entry, so that entry starts with the stack aligned as after a call.
inline void make_context(Context& context, unsigned char* base, size_t bytes, void (*entry)()) {
  const uintptr_t top = reinterpret_cast<uintptr_t>(base + bytes) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top - 8 * sizeof(void*));
  for (int i = 0; i < 6; ++i) sp[i] = nullptr;  // r15 r14 r13 r12 rbx rbp
  sp[6] = reinterpret_cast<void*>(entry);
  sp[7] = nullptr;
  context.sp = sp;
}
#else
struct Context {
  ucontext_t uc{};
};
using Resume = ucontext_t*;
inline Resume resume_of(Context& context) { return &context.uc; }
inline void switch_context(Context& from, Resume to) { swapcontext(&from.uc, to); }
inline void make_context(Context& context, unsigned char* base, size_t bytes, void (*entry)()) {
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = base;
  context.uc.uc_stack.ss_size = bytes;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
}
#endif

// 256 KB: a kernel's frames under AddressSanitizer (redzones) with room to spare.
constexpr size_t kFiberStack = 256 * 1024;

// A fiber's stack (mmap'd, the lowest page a guard) and its ThreadSanitizer
// identity, kept by the host thread from launch to launch (creating them for
// every launch cost more system time than the kernels' work).
struct Slot {
  unsigned char* base = nullptr;  // the usable kFiberStack bytes, above the guard page
  void* tsan = nullptr;
};

struct Slots {
  std::vector<Slot> slots;
  ~Slots() {
    const size_t page = static_cast<size_t>(getpagesize());
    for (Slot& slot : slots) {
#if defined(__SANITIZE_THREAD__)
      __tsan_destroy_fiber(slot.tsan);
#endif
      munmap(slot.base - page, kFiberStack + page);
    }
  }
  // The first n slots, mapping the missing ones.
  Slot* get(size_t n) {
    const size_t page = static_cast<size_t>(getpagesize());
    while (slots.size() < n) {
      void* mapping = mmap(nullptr, kFiberStack + page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
      if (mapping == MAP_FAILED) throw std::runtime_error("spa_emu: cannot map a fiber stack");
      mprotect(mapping, page, PROT_NONE);
      Slot slot;
      slot.base = static_cast<unsigned char*>(mapping) + page;
#if defined(__SANITIZE_THREAD__)
      slot.tsan = __tsan_create_fiber(0);
#endif
      slots.push_back(slot);
    }
    return slots.data();
  }
};

inline thread_local Slots fiber_slots;

// One per emulated CUDA thread: its context, its slot (stack), and its CUDA
// built-ins, which the macros threadIdx ... gridDim read through the running
// fiber (fibers share the host thread's thread_locals).
struct Fiber {
  Context context;
  Slot slot;
  void* fake_stack = nullptr;  // AddressSanitizer's, while switched out
  int index = 0;  // which thread of the block: the argument of the launch's body
  std::atomic<bool> finished{false};  // release: the scheduler's join
  uint3 thread_idx{}, block_idx{};
  dim3 block_dim, grid_dim;
  ThreadState* state = nullptr;  // null outside the kernel body
};

struct Scheduler {
  Context context;
  void* tsan = nullptr;
  void* fake_stack = nullptr;
  const void* stack_bottom = nullptr;  // the host thread's stack, as AddressSanitizer reports it
  size_t stack_bytes = 0;
  const std::function<void(int)>* body = nullptr;  // what fiber i runs: (*body)(i)
  std::atomic<Fiber*> running{nullptr};
  std::atomic<unsigned long long> progress{0};  // arrivals at barriers
  std::atomic<int> started{0};                  // release: what the launch set up, to every fiber
};

// Atomic: the launch sets it and its fibers read it (ThreadSanitizer sees each fiber as a thread).
inline thread_local std::atomic<Scheduler*> scheduler{nullptr};

inline Scheduler* current_scheduler() { return scheduler.load(std::memory_order_relaxed); }

inline Fiber& running_fiber() {
  Scheduler* s = current_scheduler();
  Fiber* fiber = s ? s->running.load(std::memory_order_relaxed) : nullptr;
  if (fiber == nullptr) throw Fault("a device function was called outside a kernel launch");
  return *fiber;
}

// From a fiber back to the scheduler. A finished fiber (`last`) never resumes:
// it publishes `finished` (the release the scheduler's join acquires) after its
// last read of the scheduler, which lives on the launching thread's stack.
inline void switch_to_scheduler(Fiber& fiber, bool last) {
  Scheduler& s = *current_scheduler();
  [[maybe_unused]] void* const target = s.tsan;
  [[maybe_unused]] const void* const bottom = s.stack_bottom;
  [[maybe_unused]] const size_t bytes = s.stack_bytes;
  const Resume back = resume_of(s.context);
  if (last) fiber.finished.store(true, std::memory_order_release);
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(target, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(last ? nullptr : &fiber.fake_stack, bottom, bytes);
#endif
  switch_context(fiber.context, back);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fiber.fake_stack, &s.stack_bottom, &s.stack_bytes);
#endif
}

// A fiber that waits: lets the others run until the scheduler comes back to it.
inline void yield() { switch_to_scheduler(running_fiber(), false); }

inline void note_progress() {
  if (Scheduler* s = current_scheduler()) s->progress.fetch_add(1, std::memory_order_relaxed);
}

inline void fiber_entry() {
  Scheduler& s = *current_scheduler();
  s.started.load(std::memory_order_acquire);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &s.stack_bottom, &s.stack_bytes);
#endif
  Fiber& fiber = *s.running.load(std::memory_order_relaxed);
  (*s.body)(fiber.index);
  switch_to_scheduler(fiber, true);
}

inline void resume(Scheduler& s, Fiber& fiber) {
  s.running.store(&fiber, std::memory_order_relaxed);
  const Resume to = resume_of(fiber.context);  // read as the scheduler, before ThreadSanitizer's switch
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(fiber.slot.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&s.fake_stack, fiber.slot.base, kFiberStack);
#endif
  switch_context(s.context, to);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(s.fake_stack, nullptr, nullptr);
#endif
  s.running.store(nullptr, std::memory_order_relaxed);
}

// Runs body(i) in fiber i for i < count, round robin, until all return. Returns "" or why
// it stopped early: a round in which no fiber finished or arrived at a barrier
// is a deadlock (the fibers still waiting are abandoned; their slots serve the
// next launch).
inline std::string run_fibers(int count, const std::function<void(int)>& body) {
  if (current_scheduler() != nullptr) return "a kernel launch from inside a kernel";
  Scheduler s;
#if defined(__SANITIZE_THREAD__)
  s.tsan = __tsan_get_current_fiber();
#endif
  s.body = &body;
  Slot* slots = fiber_slots.get(static_cast<size_t>(count));
  std::vector<std::unique_ptr<Fiber>> fibers;
  for (int i = 0; i < count; ++i) {
    auto fiber = std::make_unique<Fiber>();
    fiber->slot = slots[i];
#if defined(__SANITIZE_ADDRESS__)
    // The frames a fiber left (its entry never returns) keep their redzones poisoned.
    __asan_unpoison_memory_region(fiber->slot.base, kFiberStack);
#endif
    make_context(fiber->context, fiber->slot.base, kFiberStack, fiber_entry);
    fiber->index = i;
    fibers.push_back(std::move(fiber));
  }
  scheduler.store(&s, std::memory_order_relaxed);
  s.started.store(1, std::memory_order_release);
  std::string why;
  for (size_t live = fibers.size(); live > 0;) {
    const unsigned long long before = s.progress.load(std::memory_order_relaxed);
    size_t finished = 0;
    for (auto& fiber : fibers) {
      if (fiber->finished.load(std::memory_order_acquire)) continue;
      resume(s, *fiber);
      finished += fiber->finished.load(std::memory_order_acquire) ? 1 : 0;
    }
    live -= finished;
    if (live > 0 && finished == 0 && s.progress.load(std::memory_order_relaxed) == before) {
      why = "deadlock: " + std::to_string(live) + " of " + std::to_string(fibers.size()) +
            " threads wait at barriers that cannot complete";
      break;
    }
  }
  scheduler.store(nullptr, std::memory_order_relaxed);
  return why;
}

// A barrier of `threads` fibers: arriving ones wait (yield) until the last
// arrives. The phase change is a release/acquire pair, so ThreadSanitizer
// sees the barrier's ordering (and no other: switches order nothing).
// `done` runs in the last arriving thread before anyone leaves.
template <typename Done = void (*)()>
class Barrier {
 public:
  explicit Barrier(int threads, Done done = [] {}) : expected_(threads), count_(threads), done_(done) {}
  void arrive_and_wait() {
    const int phase = phase_.load(std::memory_order_acquire);
    if (arrive()) return;
    while (phase_.load(std::memory_order_acquire) == phase) yield();
  }
  void arrive_and_drop() {
    expected_.fetch_sub(1, std::memory_order_acq_rel);
    arrive();
  }

 private:
  // True in the thread that completes the phase.
  bool arrive() {
    note_progress();
    const int phase = phase_.load(std::memory_order_acquire);
    if (count_.fetch_sub(1, std::memory_order_acq_rel) != 1) return false;
    done_();
    count_.store(expected_.load(std::memory_order_acquire), std::memory_order_relaxed);
    phase_.store(phase + 1, std::memory_order_release);
    return true;
  }
  std::atomic<int> expected_, count_, phase_{0};
  Done done_;
};

// A barrier wait (warp or block).
template <typename B>
void wait_at(B& barrier) {
  barrier.arrive_and_wait();
}

struct Warp {
  explicit Warp(int lanes) : sync(lanes), lanes(lanes) {}
  Barrier<> sync;
  int lanes;
  std::atomic<int> live{0};
  uint32_t a[kWarpSize][4];
  uint32_t b[kWarpSize][4];
  uint32_t meta[kWarpSize];
  unsigned long long slot[kWarpSize];
};

struct Block {
  explicit Block(int threads, size_t smem_bytes) : sync(threads), smem_bytes(smem_bytes) {
    smem.reset(new unsigned char[smem_bytes ? smem_bytes : 1]);
    std::memset(smem.get(), 0x7f, smem_bytes ? smem_bytes : 1);
  }
  Barrier<> sync;
  std::unique_ptr<unsigned char[]> smem;
  size_t smem_bytes;
  std::vector<std::unique_ptr<Warp>> warps;
};

struct ThreadState {
  Block* block = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
  std::vector<Copy> open;                 // cp.async since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, oldest first
  bool dependency_resolved = false;       // griddepcontrol.wait executed (programmatic dependent launch)
};

struct Device {
  std::mutex mutex;
  std::map<const void*, int> max_dynamic_smem;
  cudaError_t last_error = cudaSuccess;
  std::string fault;
};

inline Device& device() {
  static Device instance;
  return instance;
}

// Why the last failed launch failed ("" when none has).
inline std::string last_fault() {
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().fault;
}

inline void fail_launch(const std::string& why) {
  std::lock_guard<std::mutex> lock(device().mutex);
  if (device().last_error == cudaSuccess) device().last_error = cudaErrorLaunchFailure;
  if (device().fault.empty()) device().fault = why;
}

inline int sm_count() {
  const char* value = std::getenv("SPA_EMU_SMS");
  return value ? std::atoi(value) : 132;  // H100 SXM
}

inline ThreadState& self() {
  ThreadState* state = current_scheduler() ? running_fiber().state : nullptr;
  if (state == nullptr) throw Fault("a device function was called outside a kernel launch");
  return *state;
}

inline void require_full_warp(const char* what) {
  ThreadState& s = self();
  if (s.warp->live.load() != kWarpSize)
    throw Fault(std::string(what) + " with " + std::to_string(s.warp->live.load()) +
                " live lanes (needs the whole warp)");
}

inline void* dynamic_smem() { return self().block->smem.get(); }

// ---- launches ---------------------------------------------------------------
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t smem;

  template <typename... Args>
  void operator()(Args&&... args) const {
    std::string why = check();
    if (!why.empty()) return fail_launch(why);
    run(args...);
  }

 private:
  std::string check() const {
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return "block of " + std::to_string(threads) + " threads (1..1024)";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
      return "grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z);
    size_t allowed = kDefaultSmem;
    {
      std::lock_guard<std::mutex> lock(device().mutex);
      auto it = device().max_dynamic_smem.find(reinterpret_cast<const void*>(kernel));
      if (it != device().max_dynamic_smem.end()) allowed = static_cast<size_t>(it->second);
    }
    if (smem > allowed)
      return std::to_string(smem) + " B of dynamic shared memory, above the kernel's limit of " +
             std::to_string(allowed) + " B (cudaFuncSetAttribute)";
    return "";
  }

  std::unique_ptr<Block> make_block(int threads) const {
    auto state = std::make_unique<Block>(threads, smem);
    for (int first = 0; first < threads; first += kWarpSize)
      state->warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, threads - first)));
    for (auto& warp : state->warps) warp->live = warp->lanes;
    return state;
  }

  // One fiber per CUDA thread of a block; the blocks run one after the
  // other (fresh shared memory and barriers for each), the fibers reused.
  template <typename... Args>
  void run(Args&... args) const {
    const int threads = static_cast<int>(block.x * block.y * block.z);
    const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
    unsigned long long index = 0;
    std::unique_ptr<Block> current = make_block(threads);
    auto next_block = [&]() noexcept {
      ++index;
      current = index < blocks ? make_block(threads) : nullptr;
    };
    Barrier<decltype(next_block)> between(threads, next_block);
    const std::function<void(int)> body = [&](int t) {
      Fiber& fiber = running_fiber();
      fiber.thread_idx = uint3{static_cast<unsigned>(t) % block.x, (static_cast<unsigned>(t) / block.x) % block.y,
                               static_cast<unsigned>(t) / (block.x * block.y)};
      fiber.block_dim = block;
      fiber.grid_dim = grid;
      for (;;) {
        Block* state = current.get();
        if (state == nullptr) break;
        ThreadState mine;
        mine.block = state;
        mine.warp = state->warps[t / kWarpSize].get();
        mine.lane = t % kWarpSize;
        fiber.block_idx = uint3{static_cast<unsigned>(index % grid.x), static_cast<unsigned>(index / grid.x % grid.y),
                                static_cast<unsigned>(index / (1ull * grid.x * grid.y))};
        fiber.state = &mine;
        try {
          kernel(args...);
        } catch (const Fault& fault) {
          fail_launch(fault.what());
        }
        // An exited thread no longer takes part in __syncthreads or warp collectives.
        mine.warp->live.fetch_sub(1);
        mine.warp->sync.arrive_and_drop();
        state->sync.arrive_and_drop();
        fiber.state = nullptr;
        wait_at(between);
      }
    };
    std::string why = run_fibers(threads, body);
    if (!why.empty()) fail_launch(why + " (block " + std::to_string(index) + ")");
  }
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, void (*kernel)(Params...)) {
  return Launch<Params...>{kernel, grid, block, smem};
}

// ---- tensor-core fragments (PTX ISA) ------------------------------------------
inline float to_float(uint16_t bits, const __half*) {
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}
inline float to_float(uint16_t bits, const __nv_bfloat16*) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __bfloat162float(__nv_bfloat16(raw));
}
template <typename T>
float element(uint32_t reg, int which) {
  return to_float(static_cast<uint16_t>(which ? reg >> 16 : reg & 0xffffu), static_cast<const T*>(nullptr));
}

// B (k x 8, "col"): b_i of lane 4g + t is row k = 2t + (i & 1) + 8 (i / 2), column g;
// register i / 2 holds b_{2j} (low half) and b_{2j+1}.
template <typename T>
float b_element(const Warp& w, int k, int col) {
  int lane = 4 * col + (k % 8) / 2;
  return element<T>(w.b[lane][k / 8], k % 2);
}

// D(16x8) += A(16x16) B(16x8), A row-major fragments: register j of lane
// 4g + t holds (row g + 8 (j & 1), cols 2t + 8 (j / 2) + {0, 1}); D: c_i is
// row g + 8 (i / 2), column 2t + (i & 1).
template <typename T>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  require_full_warp("mma.sync");
  ThreadState& s = self();
  Warp& w = *s.warp;
  for (int j = 0; j < 4; ++j) w.a[s.lane][j] = a[j];
  w.b[s.lane][0] = b0;
  w.b[s.lane][1] = b1;
  wait_at(w.sync);
  const int g = s.lane / 4, t = s.lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + (i & 1);
    double sum = 0;
    for (int k = 0; k < 16; ++k) {
      const int owner = 4 * (row % 8) + (k % 8) / 2;
      const int reg = (row / 8) + 2 * (k / 8);
      sum += static_cast<double>(element<T>(w.a[owner][reg], k % 2)) * b_element<T>(w, k, col);
    }
    d[i] = static_cast<float>(d[i] + sum);
  }
  wait_at(w.sync);
}

// Sparse D(16x8) += A(16x32, 2:4 along k) B(32x8), sparsity selector 0.
// A: the 16x16 compressed fragment has the dense m16n8k16 layout; compressed
// columns 2c, 2c + 1 are the two kept values of chunk c (original columns
// 4c..4c+3). Metadata (ordered: i0 < i1, 2 bits each, a nibble per chunk):
// lanes 4g and 4g + 1 supply it; the word of lane 4g + h describes chunks
// 4h..4h+3 (columns 16h..16h+15), bits 4c.. for row g and 16 + 4c.. for
// row g + 8. (The lane-to-column-half assignment is this file's reading of
// the ISA figure; plugins/README.md "w4_sp24" says how a GPU run confirms it.)
template <typename T>
void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t meta) {
  require_full_warp("mma.sp.sync");
  ThreadState& s = self();
  Warp& w = *s.warp;
  for (int j = 0; j < 4; ++j) {
    w.a[s.lane][j] = a[j];
    w.b[s.lane][j] = b[j];
  }
  w.meta[s.lane] = meta;
  wait_at(w.sync);
  const int g = s.lane / 4, t = s.lane % 4;
  std::string bad;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + (i & 1);
    double sum = 0;
    for (int chunk = 0; chunk < 8; ++chunk) {
      const int owner = 4 * (row % 8) + chunk % 4;
      const int reg = (row / 8) + 2 * (chunk / 4);
      const uint32_t word = w.meta[4 * (row % 8) + chunk / 4];
      const uint32_t nibble = (word >> (16 * (row / 8) + 4 * (chunk % 4))) & 0xfu;
      const int i0 = nibble & 3, i1 = nibble >> 2;
      if (i0 >= i1) bad = "mma.sp: metadata nibble " + std::to_string(nibble) + " of word " + std::to_string(word) + " (lane " + std::to_string(4 * (row % 8) + chunk / 4) + ") is not ordered (i0 < i1)";
      sum += static_cast<double>(element<T>(w.a[owner][reg], 0)) * b_element<T>(w, 4 * chunk + i0, col);
      sum += static_cast<double>(element<T>(w.a[owner][reg], 1)) * b_element<T>(w, 4 * chunk + i1, col);
    }
    d[i] = static_cast<float>(d[i] + sum);
  }
  wait_at(w.sync);
  if (!bad.empty()) throw Fault(bad);
}

// ---- programmatic dependent launch (griddepcontrol) --------------------------
// Here every block of a launch runs after every block of the launch before,
// so griddepcontrol.wait has nothing to order. What is checked is the
// kernels' side of the contract on the GPU, where a launch with programmatic
// stream serialization may start while the kernel before it still runs:
// nothing an earlier kernel may write or still read (activations, outputs,
// the split workspace) is touched before the thread's wait.
inline void griddepcontrol_wait() { self().dependency_resolved = true; }

inline void require_dependency(const char* what) {
  if (!self().dependency_resolved)
    throw Fault(std::string(what) + " before griddepcontrol.wait (with programmatic dependent launch the kernel "
                "before may still be writing it)");
}

// ---- cp.async -----------------------------------------------------------------
// cp.async of `bytes` (4, 8 or 16): both addresses aligned to the size.
inline void cp_async(void* smem, const void* gmem, int bytes, bool zero_fill) {
  ThreadState& s = self();
  auto* dst = static_cast<unsigned char*>(smem);
  unsigned char* base = s.block->smem.get();
  if (dst < base || dst + bytes > base + s.block->smem_bytes)
    throw Fault("cp.async destination outside the block's shared memory");
  if (reinterpret_cast<uintptr_t>(dst) % bytes || (!zero_fill && reinterpret_cast<uintptr_t>(gmem) % bytes))
    throw Fault("cp.async of " + std::to_string(bytes) + " B needs " + std::to_string(bytes) +
                "-byte aligned addresses");
  s.open.push_back(Copy{dst, zero_fill ? nullptr : static_cast<const unsigned char*>(gmem), bytes});
}

inline void cp_async16(void* smem, const void* gmem, bool zero_fill) { cp_async(smem, gmem, 16, zero_fill); }

inline void cp_async_commit() {
  ThreadState& s = self();
  s.groups.push_back(std::move(s.open));
  s.open.clear();
}

// Retires every committed group but the newest `pending` (copies land now).
inline void cp_async_wait(int pending) {
  ThreadState& s = self();
  while (static_cast<int>(s.groups.size()) > pending) {
    for (const Copy& copy : s.groups.front()) {
      if (copy.src)
        std::memcpy(copy.dst, copy.src, copy.bytes);
      else
        std::memset(copy.dst, 0, copy.bytes);
    }
    s.groups.erase(s.groups.begin());
  }
}

template <typename T>
unsigned long long to_bits(T value) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 64 bits");
  unsigned long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(unsigned long long bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// A warp exchange: each lane publishes `value` and reads the value of lane
// source(own lane); a source outside the warp keeps the lane's own value (as
// shfl.up / shfl.down do at the edges).
template <typename T, typename Source>
T shuffle(unsigned mask, T value, Source source_of) {
  if (mask != 0xffffffffu) throw Fault("shuffle with a partial mask (not used by spa's kernels)");
  require_full_warp("shfl.sync");
  ThreadState& s = self();
  Warp& w = *s.warp;
  w.slot[s.lane] = to_bits(value);
  wait_at(w.sync);
  const int source = source_of(s.lane);
  T result = (source < 0 || source >= kWarpSize) ? value : from_bits<T>(w.slot[source]);
  wait_at(w.sync);
  return result;
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane 8i + r gives the byte offset
// (from the dynamic shared memory) of row r of matrix i; lane l receives in
// r[i] the 32 bits at byte 4 (l % 4) of row l / 4 of matrix i. Rows are 16 B
// and must be 16-B aligned and inside the block's shared memory.
inline void ldmatrix_x4(uint32_t (&r)[4], const unsigned char* base, uint32_t offset) {
  require_full_warp("ldmatrix.sync");
  ThreadState& s = self();
  Warp& w = *s.warp;
  if (base != s.block->smem.get()) throw Fault("ldmatrix: base is not the block's dynamic shared memory");
  if (offset % 16 || offset + 16 > s.block->smem_bytes)
    throw Fault("ldmatrix row address " + std::to_string(offset) + " is not a 16-B aligned row of shared memory");
  w.slot[s.lane] = offset;
  wait_at(w.sync);
  for (int i = 0; i < 4; ++i)
    std::memcpy(&r[i], base + w.slot[8 * i + s.lane / 4] + 4 * (s.lane % 4), 4);
  wait_at(w.sync);
}

}  // namespace spa_emu

// ---- CUDA built-in variables ------------------------------------------------
// The running fiber's (fibers share the host thread's thread_locals).
#define threadIdx (::spa_emu::running_fiber().thread_idx)
#define blockIdx (::spa_emu::running_fiber().block_idx)
#define blockDim (::spa_emu::running_fiber().block_dim)
#define gridDim (::spa_emu::running_fiber().grid_dim)

// ---- CUDA device functions the kernels call --------------------------------------
inline void __syncthreads() { spa_emu::wait_at(spa_emu::self().block->sync); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
  return spa_emu::shuffle(mask, value, [source_lane](int) { return source_lane & (spa_emu::kWarpSize - 1); });
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta) {
  return spa_emu::shuffle(mask, value, [delta](int lane) { return lane - static_cast<int>(delta); });
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  return spa_emu::shuffle(mask, value, [delta](int lane) { return lane + static_cast<int>(delta); });
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return spa_emu::shuffle(mask, value, [lane_mask](int lane) { return lane ^ lane_mask; });
}

// A warp vote: bit l of the result is lane l's predicate (full mask only).
inline unsigned __ballot_sync(unsigned mask, bool predicate) {
  if (mask != 0xffffffffu) throw spa_emu::Fault("ballot with a partial mask (not used by spa's kernels)");
  spa_emu::require_full_warp("vote.ballot.sync");
  spa_emu::ThreadState& s = spa_emu::self();
  spa_emu::Warp& w = *s.warp;
  w.slot[s.lane] = predicate ? 1 : 0;
  spa_emu::wait_at(w.sync);
  unsigned bits = 0;
  for (int lane = 0; lane < spa_emu::kWarpSize; ++lane) bits |= static_cast<unsigned>(w.slot[lane] & 1u) << lane;
  spa_emu::wait_at(w.sync);
  return bits;
}
inline int __ffs(int x) { return __builtin_ffs(x); }

inline float atomicAdd(float* address, float value) {
  return std::atomic_ref<float>(*address).fetch_add(value);
}
inline int atomicAdd(int* address, int value) { return std::atomic_ref<int>(*address).fetch_add(value); }
inline int atomicExch(int* address, int value) { return std::atomic_ref<int>(*address).exchange(value); }
// Blocks run one after the other, so a fence orders nothing the block barrier
// between them does not already; ThreadSanitizer does not model fences
// (g++ -Wtsan), so there it is only a compiler barrier.
#ifdef __SANITIZE_THREAD__
inline void __threadfence() { std::atomic_signal_fence(std::memory_order_seq_cst); }
#else
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#endif

template <typename T>
T __ldg(const T* p) {
  return *p;
}
template <typename T>
T __ldcs(const T* p) {
  return *p;
}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}

// HFMA2 (cuda_fp16.h declares it device-only): each half is a * b + c with one
// rounding; in double the product of two halves and the sum are exact.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  auto one = [](__half x, __half y, __half z) {
    return __double2half(static_cast<double>(__half2float(x)) * __half2float(y) + __half2float(z));
  };
  return __halves2half2(one(__low2half(a), __low2half(b), __low2half(c)),
                        one(__high2half(a), __high2half(b), __high2half(c)));
}

inline int min(int a, int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// ---- CUDA runtime calls the launchers make (no GPU, no libcudart) ----------------
// Resident blocks per SM: the host has no register counts, so shared memory (228 KB
// per SM, 1 KB reserved per block, as on sm_90) and 2048 threads decide;
// SPA_EMU_CTAS_PER_SM overrides (0: "unknown", the launchers' swept table).
template <typename... Params>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void (*)(Params...), int threads,
                                                          size_t dynamic_smem) {
  if (blocks == nullptr || threads <= 0) return cudaErrorInvalidValue;
  if (const char* forced = std::getenv("SPA_EMU_CTAS_PER_SM")) {
    *blocks = std::atoi(forced);
    return *blocks > 0 ? cudaSuccess : cudaErrorInvalidValue;
  }
  const size_t by_smem = (228 * 1024) / (dynamic_smem + 1024);
  *blocks = static_cast<int>(std::min<size_t>(2048 / threads, by_smem));
  return cudaSuccess;
}

template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || static_cast<size_t>(value) > spa_emu::kMaxSmem) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(spa_emu::device().mutex);
  spa_emu::device().max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}
