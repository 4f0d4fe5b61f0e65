#include "common/bytes.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace stp {
namespace {

TEST(Bytes, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(parse_bytes("4096", "x"), 4096);
  EXPECT_EQ(parse_bytes("512MiB", "x"), 512ll << 20);
  EXPECT_EQ(parse_bytes("20GiB", "x"), 20ll << 30);
  EXPECT_EQ(parse_bytes("1.5GB", "x"), 1500000000ll);
  EXPECT_EQ(parse_bytes("0", "x"), 0);
}

TEST(Bytes, RejectsGarbageNamingTheSetting) {
  for (const char* bad : {"", "GiB", "12 apples", "-3MiB", "1e400", "nan"}) {
    try {
      parse_bytes(bad, "--budget");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("--budget='"), std::string::npos) << e.what();
    }
  }
}

TEST(Bytes, FormatsWithTheLargestFittingUnit) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(3.0 * (1ll << 30)), "3.00 GiB");
}

}  // namespace
}  // namespace stp
