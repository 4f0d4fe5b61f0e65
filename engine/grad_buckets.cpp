#include "engine/grad_buckets.h"

#include <ATen/ATen.h>

#include <stdexcept>
#include <utility>

#include "common/check.h"
#include "engine/comm.h"

namespace stp::engine {
namespace {

// Each gradient starts on a 64-byte boundary of its bucket, so the vectorised kernels that read
// it (foreach norm, fused AdamW) see the alignment a separately allocated tensor has.
constexpr std::int64_t kAlignBytes = 64;

std::int64_t aligned_numel(const at::Tensor& t) {
  const std::int64_t per = kAlignBytes / static_cast<std::int64_t>(t.element_size());
  return (t.numel() + per - 1) / per * per;
}

bool same_kind(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.device() == b.device();
}

}  // namespace

GradBuckets::GradBuckets(std::vector<Param*> params, std::int64_t bucket_bytes) {
  STP_CHECK(bucket_bytes >= 1, "bucket_bytes=", bucket_bytes, " must be >= 1");
  for (const Param* p : params)
    STP_CHECK(p->grad.defined(), "parameter ", p->name, " has no gradient to bucket");
  // Groups of one (dtype, device), in the order their first parameter comes.
  std::vector<std::vector<Param*>> groups;
  for (Param* p : params) {
    auto g = groups.begin();
    while (g != groups.end() && !same_kind(g->front()->grad, p->grad)) ++g;
    if (g == groups.end())
      groups.push_back({p});
    else
      g->push_back(p);
  }
  auto close = [this](std::vector<Param*>& members, std::int64_t numel) {
    if (members.empty()) return;
    const at::Tensor& first = members.front()->grad;
    Bucket b{at::zeros({numel}, first.options()), std::move(members)};
    std::int64_t offset = 0;
    for (Param* p : b.params) {
      at::Tensor view = b.flat.narrow(0, offset, p->grad.numel()).view(p->grad.sizes());
      view.copy_(p->grad);
      offset += aligned_numel(p->grad);
      p->grad = view;
    }
    buckets_.push_back(std::move(b));
    members.clear();
  };
  for (auto& group : groups) {
    std::vector<Param*> members;
    std::int64_t numel = 0;
    for (Param* p : group) {
      const std::int64_t n = aligned_numel(p->grad);
      if (!members.empty() && (numel + n) * p->grad.element_size() > bucket_bytes) {
        close(members, numel);
        numel = 0;
      }
      members.push_back(p);
      numel += n;
    }
    close(members, numel);
  }
}

void GradBuckets::zero() {
  check_views();
  for (Bucket& b : buckets_) b.flat.zero_();
}

void GradBuckets::check_views() const {
  for (const Bucket& b : buckets_) {
    const auto* base = static_cast<const char*>(b.flat.data_ptr());
    const auto* end = base + b.flat.nbytes();
    for (const Param* p : b.params) {
      const auto* at = static_cast<const char*>(p->grad.data_ptr());
      if (at < base || at >= end)
        throw std::logic_error("GradBuckets: the gradient of " + p->name +
                               " was reassigned and no longer views its bucket (models must "
                               "accumulate into Param::grad in place)");
    }
  }
}

void GradBuckets::reduce(Group* group, double scale) {
  check_views();
  if (group != nullptr && group->size() > 1) {
    std::vector<CommHandle> pending;
    pending.reserve(buckets_.size());
    for (Bucket& b : buckets_) pending.push_back(group->all_reduce_async(b.flat));
    for (auto& h : pending) h.wait();
  }
  if (scale != 1.0)
    for (Bucket& b : buckets_) b.flat.mul_(scale);
}

}  // namespace stp::engine
