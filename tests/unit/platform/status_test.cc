#include "platform/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

namespace ws {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ToStringNamesCodeAndMessage) {
  Status s = NotFound("no such event");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "NOT_FOUND: no such event");
  EXPECT_EQ(DataLoss("x").ToString(), "DATA_LOSS: x");
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  Status s = ResourceExhausted("store full").WithContext("append event e-1");
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "append event e-1: store full");
  // Context on OK stays OK: callers may add context unconditionally.
  Status ok = Status::Ok().WithContext("anything");
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.message(), "");
}

TEST(StatusTest, ErrnoStatusMapsCommonErrors) {
  EXPECT_EQ(ErrnoStatus(ENOENT, "open a").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(ENOSPC, "write a").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EDQUOT, "write a").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EEXIST, "mkdir a").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoStatus(EACCES, "open a").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EIO, "fsync a").code(), StatusCode::kDataLoss);
  EXPECT_EQ(ErrnoStatus(ECONNREFUSED, "connect").code(), StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoStatus(ENOTSUP, "x").code(), StatusCode::kInternal);
}

TEST(StatusTest, ErrnoStatusMessageHasContextAndErrnoText) {
  Status s = ErrnoStatus(ENOENT, "open /var/outbox.db");
  EXPECT_EQ(s.message().rfind("open /var/outbox.db: ", 0), 0u) << s.message();
  EXPECT_NE(s.message().find(std::strerror(ENOENT)), std::string::npos) << s.message();
}

TEST(ResultTest, HoldsValue) {
  Result<std::string> r(std::string("payload"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(r.value(), "payload");
  EXPECT_EQ(*r, "payload");
  EXPECT_EQ(r->size(), 7u);
}

TEST(ResultTest, HoldsError) {
  Result<int> r(InvalidArgument("bad"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "bad");
}

TEST(ResultTest, OkStatusBecomesInternalError) {
  // A Result must never claim success without a value.
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultTest, MoveOnlyValueCanBeTakenOut) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

// Helpers for the macro tests: `steps` records how far each function got.
Status Step(bool fail, int* steps) {
  ++*steps;
  return fail ? Unavailable("step failed") : Status::Ok();
}

Result<int> Number(bool fail, int value) {
  if (fail) return NotFound("no number");
  return value;
}

Status TwoSteps(bool fail_first, int* steps) {
  WS_TRY(Step(fail_first, steps));
  WS_TRY(Step(false, steps));
  return Status::Ok();
}

Status TryOnResult(bool fail, int* steps) {
  WS_TRY(Number(fail, 1));
  ++*steps;
  return Status::Ok();
}

Result<int> Sum(bool fail_second, int* steps) {
  WS_ASSIGN_OR_RETURN(int a, Number(false, 40));
  ++*steps;
  WS_ASSIGN_OR_RETURN(int b, Number(fail_second, 2));
  ++*steps;
  return a + b;
}

TEST(StatusMacroTest, TryContinuesOnOk) {
  int steps = 0;
  EXPECT_TRUE(TwoSteps(false, &steps).ok());
  EXPECT_EQ(steps, 2);
}

TEST(StatusMacroTest, TryReturnsFirstError) {
  int steps = 0;
  Status s = TwoSteps(true, &steps);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "step failed");
  EXPECT_EQ(steps, 1);  // the second step never ran
}

TEST(StatusMacroTest, TryAcceptsResult) {
  int steps = 0;
  EXPECT_TRUE(TryOnResult(false, &steps).ok());
  EXPECT_EQ(steps, 1);
  Status s = TryOnResult(true, &steps);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(steps, 1);
}

TEST(StatusMacroTest, AssignOrReturnAssignsValue) {
  int steps = 0;
  Result<int> r = Sum(false, &steps);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
  EXPECT_EQ(steps, 2);
}

TEST(StatusMacroTest, AssignOrReturnReturnsError) {
  int steps = 0;
  Result<int> r = Sum(true, &steps);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(steps, 1);
}

}  // namespace
}  // namespace ws
