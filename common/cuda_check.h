// Return-code wrappers for the CUDA runtime and NCCL (STYLE.md item 8). Only included by
// sources compiled with STP_WITH_CUDA. Each throws std::runtime_error naming the call, the
// error string and where it happened.
#pragma once

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/check.h"

#define STP_CUDA_CHECK(expr)                                                               \
  do {                                                                                     \
    cudaError_t stp_err_ = (expr);                                                         \
    if (stp_err_ != cudaSuccess)                                                           \
      throw std::runtime_error(::stp::str_cat(__FILE__, ":", __LINE__, ": ", #expr,        \
                                              " failed: ", cudaGetErrorString(stp_err_))); \
  } while (0)

// For destructors: logs instead of throwing.
#define STP_CUDA_WARN(expr)                                                               \
  do {                                                                                    \
    cudaError_t stp_err_ = (expr);                                                        \
    if (stp_err_ != cudaSuccess)                                                          \
      ::stp::log_error(::stp::str_cat(#expr, " failed: ", cudaGetErrorString(stp_err_))); \
  } while (0)

#endif  // STP_WITH_CUDA
