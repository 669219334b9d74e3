// The few CUDA runtime entry points the spa launchers call, for the host
// emulation (spa_emu.h): "device" memory is host memory and streams are
// ignored (every launch finishes before it returns).
#include "spa_emu.h"

#if defined(SPA_EMU_ASM_SWITCH)
// spa_emu_switch(save, load) (spa_emu.h, fibers): the System V AMD64 ABI keeps
// rbx, rbp and r12-r15 across a call; the caller saves everything else. Push
// them, store the stack pointer to *save (rdi), switch to `load` (rsi), pop the
// other fiber's and return into it (into its entry on its first switch).
asm(R"(
  .pushsection .text
  .globl spa_emu_switch
  .type spa_emu_switch, @function
spa_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size spa_emu_switch, .-spa_emu_switch
  .popsection
)");
#endif

extern "C" {

cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::mutex> lock(spa_emu::device().mutex);
  cudaError_t error = spa_emu::device().last_error;
  spa_emu::device().last_error = cudaSuccess;
  return error;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t count, cudaStream_t) {
  std::memset(pointer, value, count);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  *pointer = std::malloc(bytes ? bytes : 1);
  return *pointer ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  std::memcpy(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : error == cudaErrorLaunchFailure ? "launch failure (emulated)" : "error";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attribute, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  if (attribute != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = spa_emu::sm_count();
  return cudaSuccess;
}

}  // extern "C"
