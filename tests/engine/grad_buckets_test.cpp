#include "engine/grad_buckets.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <deque>
#include <stdexcept>

#include "comm_test_util.h"
#include "engine/comm.h"

namespace stp::engine {
namespace {

// Parameters with gradients whose values depend on the rank (so a sum over ranks is visible).
std::deque<Param> make_params(int rank, at::ScalarType second_dtype = at::kDouble) {
  std::deque<Param> ps;
  const std::vector<std::vector<std::int64_t>> shapes = {{3, 5}, {7}, {4, 4}, {33}, {2, 3, 2}};
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    Param p;
    p.name = "p" + std::to_string(i);
    const auto dtype = i == 2 ? second_dtype : at::kDouble;
    p.value = at::zeros(shapes[i], at::TensorOptions().dtype(dtype));
    p.grad = at::arange(p.value.numel(), p.value.options()).view(shapes[i]).mul(0.37 + rank) +
             static_cast<double>(i);
    ps.push_back(std::move(p));
  }
  return ps;
}

std::vector<Param*> pointers(std::deque<Param>& ps) {
  std::vector<Param*> out;
  for (auto& p : ps) out.push_back(&p);
  return out;
}

bool views(const at::Tensor& bucket, const at::Tensor& t) {
  const auto* base = static_cast<const char*>(bucket.data_ptr());
  const auto* at = static_cast<const char*>(t.data_ptr());
  return at >= base && at + t.nbytes() <= base + bucket.nbytes();
}

TEST(GradBuckets, GradientsBecomeViewsOfBucketsAndKeepTheirValues) {
  auto ps = make_params(0, at::kFloat);
  std::vector<at::Tensor> before;
  for (auto& p : ps) before.push_back(p.grad.clone());
  // 160 bytes: 20 doubles, so the 33-element gradient gets a bucket of its own.
  GradBuckets b(pointers(ps), 160);
  int found = 0;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(at::equal(ps[i].grad, before[i])) << ps[i].name;
    for (int k = 0; k < b.buckets(); ++k) {
      if (!views(b.bucket(k), ps[i].grad)) continue;
      ++found;
      EXPECT_EQ(b.bucket(k).scalar_type(), ps[i].grad.scalar_type()) << ps[i].name;
      // 64-byte aligned within the bucket.
      const auto off = static_cast<const char*>(ps[i].grad.data_ptr()) -
                       static_cast<const char*>(b.bucket(k).data_ptr());
      EXPECT_EQ(off % 64, 0) << ps[i].name;
    }
  }
  EXPECT_EQ(found, static_cast<int>(ps.size()));  // each gradient in exactly one bucket
  // float64: {15, 7} padded to 16 + 8 doubles = 192 bytes > 160, so 15 | 7 | 33 | 12 apart;
  // the float32 one alone.
  EXPECT_EQ(b.buckets(), 5);
  for (int k = 0; k < b.buckets(); ++k)
    EXPECT_TRUE(b.bucket(k).nbytes() <= 160 || b.bucket(k).numel() >= 33) << k;
}

TEST(GradBuckets, OneLargeBucketHoldsEveryGradientOfADtype) {
  auto ps = make_params(0);
  GradBuckets b(pointers(ps));
  EXPECT_EQ(b.buckets(), 1);
  ps[1].grad.add_(1.0);  // in place: the bucket sees it
  EXPECT_TRUE(at::equal(ps[1].grad, b.bucket(0).narrow(0, 16, 7)));
}

TEST(GradBuckets, ReduceEqualsThePerParameterLoop) {
  CommOptions o;  // dp 3: tp = pp = 1
  o.timeout = std::chrono::milliseconds(20000);
  stp::testing::run_ranks(3, o, [](World& w) {
    auto expected = make_params(w.rank());
    for (auto& p : expected) {  // the loop Trainer::reduce_gradients ran before buckets
      w.dp_group().all_reduce_async(p.grad).wait();
      p.grad.mul_(1.0 / 24);
    }
    auto ps = make_params(w.rank());
    GradBuckets b(pointers(ps), 128);
    b.reduce(&w.dp_group(), 1.0 / 24);
    for (std::size_t i = 0; i < ps.size(); ++i) {
      EXPECT_TRUE(at::allclose(ps[i].grad, expected[i].grad, 1e-15, 0)) << ps[i].name;
      // The sum over ranks r of (arange * (0.37 + r) + i), scaled.
      const auto n = ps[i].grad.numel();
      at::Tensor want =
          (at::arange(n, at::kDouble) * (3 * 0.37 + 3) + 3.0 * static_cast<double>(i)) / 24;
      EXPECT_TRUE(at::allclose(ps[i].grad.reshape({-1}), want, 1e-14, 1e-14)) << ps[i].name;
    }
  });
}

TEST(GradBuckets, ZeroClearsEveryGradient) {
  auto ps = make_params(1);
  GradBuckets b(pointers(ps), 100);
  b.zero();
  for (auto& p : ps) EXPECT_EQ(p.grad.abs().sum().item<double>(), 0.0) << p.name;
}

TEST(GradBuckets, WithoutAGroupOnlyScales) {
  auto ps = make_params(1);
  std::vector<at::Tensor> before;
  for (auto& p : ps) before.push_back(p.grad.clone());
  GradBuckets b(pointers(ps), 100);
  b.reduce(nullptr, 0.5);
  for (std::size_t i = 0; i < ps.size(); ++i)
    EXPECT_TRUE(at::equal(ps[i].grad, before[i] * 0.5)) << ps[i].name;
}

TEST(GradBuckets, AReassignedGradientIsRefusedNamingIt) {
  auto ps = make_params(0);
  GradBuckets b(pointers(ps));
  ps[3].grad = at::zeros_like(ps[3].grad);
  try {
    b.reduce(nullptr, 1.0);
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("p3"), std::string::npos) << e.what();
  }
}

TEST(GradBuckets, RefusesAParameterWithoutGradientAndABadSize) {
  auto ps = make_params(0);
  EXPECT_THROW(GradBuckets(pointers(ps), 0), std::invalid_argument);
  ps[0].grad = at::Tensor();
  EXPECT_THROW(GradBuckets(pointers(ps)), std::invalid_argument);
}

}  // namespace
}  // namespace stp::engine
