#include "common/check.h"

#include <gtest/gtest.h>

namespace stp {
namespace {

TEST(Check, InvalidArgumentCarriesStreamedMessage) {
  int m = 6, p = 4;
  try {
    STP_CHECK(m >= 2 * p, "microbatches=", m, " must be >= 2*pp=", 2 * p);
    FAIL() << "STP_CHECK did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "microbatches=6 must be >= 2*pp=8");
  }
}

TEST(Check, AssertNamesFileAndExpression) {
  try {
    STP_ASSERT(1 + 1 == 3, "arithmetic");
    FAIL() << "STP_ASSERT did not throw";
  } catch (const std::logic_error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("check_test.cpp"), std::string::npos) << what;
    EXPECT_NE(what.find("1 + 1 == 3"), std::string::npos) << what;
    EXPECT_NE(what.find("arithmetic"), std::string::npos) << what;
  }
}

TEST(Check, PassingChecksDoNotThrow) {
  EXPECT_NO_THROW(STP_CHECK(true, "never"));
  EXPECT_NO_THROW(STP_ASSERT(true, "never"));
}

}  // namespace
}  // namespace stp
