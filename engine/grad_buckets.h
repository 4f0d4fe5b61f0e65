// GradBuckets: a rank's parameter gradients laid out in a few flat buffers, so the data-parallel
// reduction is one all-reduce and one scale per bucket instead of one of each per parameter.
//
// Note [Gradient buckets]
// ~~~~~~~~~~~~~~~~~~~~~~~
// Layout. At construction every Param::grad is moved into a flat buffer and becomes a view of
// it (its values kept): parameters are grouped by (dtype, device) in the order given, and a
// group is cut into buckets of at most `bucket_bytes` (a larger parameter has a bucket of its
// own). The models only ever accumulate into Param::grad in place (add_, addmm out=, zero_),
// so the views stay views; a Param::grad assigned anew afterwards would leave its bucket,
// which reduce() checks (std::logic_error naming the parameter) rather than reduce a stale
// buffer.
//
// reduce(group, scale): every bucket's all-reduce (sum) is issued before the first is waited
// for, so on NCCL they queue back to back on the group's stream and on Gloo they run
// concurrently; then each bucket is scaled once (the step's 1 / (m * dp)). The scale is applied
// after the sum, as the per-parameter loop did, so the result is the same sum scaled the same
// way; only the all-reduce's own summation order may differ with the buffer's length (a ring
// splits a buffer into segments), which moves a float64 result by about one ulp. With no
// group (dp = 1) only the scale runs.
//
// Why copies are not needed: the optimizer and the models read Param::grad, which is the
// bucket's memory; nothing is packed or unpacked.
//
// Thread-safety: one rank's thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/chunk.h"

namespace stp::engine {

class Group;

class GradBuckets {
 public:
  static constexpr std::int64_t kDefaultBucketBytes = 25LL << 20;  // DDP's default

  // REQUIRES: every param has a defined grad; bucket_bytes >= 1 (std::invalid_argument).
  // The params must outlive this object.
  GradBuckets(std::vector<Param*> params, std::int64_t bucket_bytes = kDefaultBucketBytes);

  // Sums every bucket over `group` (nullptr or a group of one: no communication), then
  // multiplies by `scale`. Throws std::logic_error when a Param::grad no longer views its bucket
  // (as zero() does).
  void reduce(Group* group, double scale);

  // Zeroes every gradient: one fill per bucket.
  void zero();

  int buckets() const { return static_cast<int>(buckets_.size()); }
  const at::Tensor& bucket(int i) const { return buckets_[i].flat; }

 private:
  void check_views() const;  // std::logic_error naming a gradient that left its bucket

  struct Bucket {
    at::Tensor flat;
    std::vector<Param*> params;
  };
  std::vector<Bucket> buckets_;
};

}  // namespace stp::engine
