// The VFS that gathers WAL writes, on real SQLite files. Writes and syncs
// are counted by the crash tests' FaultVfs underneath (installed as the
// default VFS), which can also fail a write.
#include "adapters/sqlite/wal_write_vfs.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>

#include "adapters/sqlite/sqlite_handle.h"
#include "tests/crash/fault_vfs.h"
#include "tests/support/test_support.h"

namespace ws::sqlite {
namespace {

using ws::testing::FaultError;
using ws::testing::FaultVfs;

int64_t QueryInt(Connection& db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db.get(), sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) return -1;
  int64_t value = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) value = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  return value;
}

int Gather(Connection& db, bool on) {
  int arg = on ? 1 : 0;
  return sqlite3_file_control(db.get(), "main", kWalGatherControl, &arg);
}

class WalWriteVfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vfs = FaultVfs::Install();
    ASSERT_TRUE(vfs.ok()) << vfs.status().ToString();
    fault_ = std::move(vfs).value();
    auto name = WalWriteVfs("");
    ASSERT_TRUE(name.ok()) << name.status().ToString();
    vfs_name_ = *name;
  }

  // A writer as the store opens one: 1 KiB pages, WAL, synchronous=FULL;
  // no automatic checkpoints, whose writes to the database file would count.
  Connection OpenWriter(bool gather, int cache_pages = 2000) {
    auto db = Connection::Open(path_, vfs_name_);
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    Connection c = std::move(db).value();
    const std::string setup = "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                              "PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=" + std::to_string(cache_pages) +
                              "; CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, v BLOB NOT NULL);";
    EXPECT_TRUE(c.Exec(setup.c_str(), "setup").ok());
    EXPECT_EQ(Gather(c, gather), SQLITE_OK);
    return c;
  }

  // Inserts `rows` rows of 500 bytes (about one 1 KiB page for two) in one
  // transaction and returns the writes it took; -1 when the commit failed.
  int64_t InsertRows(Connection& db, int rows) {
    const int64_t before = fault_->Counters().writes;
    if (!db.Exec("BEGIN", "begin").ok()) return -1;
    const std::string insert =
        "INSERT INTO t(v) SELECT randomblob(500) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
        "FROM n WHERE i < " + std::to_string(rows) + ") SELECT i FROM n)";
    if (!db.Exec(insert.c_str(), "insert").ok() || !db.Exec("COMMIT", "commit").ok()) {
      static_cast<void>(db.Exec("ROLLBACK", "rollback"));
      return -1;
    }
    return fault_->Counters().writes - before;
  }

  ws::testing::TempDir dir_;
  std::string path_ = dir_.File("w.db");
  std::unique_ptr<FaultVfs> fault_;
  std::string vfs_name_;
};

TEST_F(WalWriteVfsTest, ACommitReachesTheWalInOneWriteWhileGathering) {
  Connection db = OpenWriter(/*gather=*/true);
  ASSERT_GT(InsertRows(db, 1), 0);  // the first commit also writes the WAL header
  const int64_t syncs = fault_->Counters().syncs;
  // About 60 frames of 1,048 bytes: one write, then the commit's sync.
  EXPECT_EQ(InsertRows(db, 100), 1);
  EXPECT_EQ(fault_->Counters().syncs, syncs + 1);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t"), 101);
}

TEST_F(WalWriteVfsTest, WithoutTheControlEveryFrameIsWrittenAsSQLiteWritesIt) {
  Connection db = OpenWriter(/*gather=*/false);
  ASSERT_GT(InsertRows(db, 1), 0);
  // A header and a page per frame.
  EXPECT_GE(InsertRows(db, 100), 100);
}

TEST_F(WalWriteVfsTest, ALargeCommitIsWrittenInPiecesSQLitesUnixVfsAccepts) {
  Connection db = OpenWriter(/*gather=*/true);
  ASSERT_GT(InsertRows(db, 1), 0);
  // A row of 500 bytes per 1 KiB page: about 2,000 frames, 2.1 MB, in
  // writes of at most 124 KiB (one of more fails in the unix VFS).
  const int64_t writes = InsertRows(db, 2000);
  EXPECT_GE(writes, 17);
  EXPECT_LE(writes, 20);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t"), 2001);
}

TEST_F(WalWriteVfsTest, AnotherConnectionSeesEveryCommitWhileTheWriterStaysOpen) {
  Connection writer = OpenWriter(/*gather=*/true);
  auto reader = Connection::Open(path_, "");
  ASSERT_TRUE(reader.ok());
  for (int round = 1; round <= 5; ++round) {
    ASSERT_GT(InsertRows(writer, 50), 0);
    EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 50 * round);
    EXPECT_EQ(QueryInt(*reader, "SELECT sum(length(v)) FROM t"), 500 * 50 * round);
  }
}

// As the store's acks do: synchronous=NORMAL between FULL commits, with
// gathering on throughout. A commit that does not sync is one write too,
// and reaches the file before SQLite publishes it, or the reader would
// read frames that are not there.
TEST_F(WalWriteVfsTest, CommitsThatDoNotSyncReachTheWalInOneWriteBeforeTheyArePublished) {
  Connection writer = OpenWriter(/*gather=*/true);
  auto reader = Connection::Open(path_, "");
  ASSERT_TRUE(reader.ok());
  ASSERT_GT(InsertRows(writer, 50), 0);
  ASSERT_TRUE(writer.Exec("PRAGMA synchronous=NORMAL", "normal").ok());
  const int64_t syncs = fault_->Counters().syncs;
  const int64_t writes = fault_->Counters().writes;
  ASSERT_TRUE(writer.Exec("DELETE FROM t WHERE k % 2 = 0", "delete").ok());
  EXPECT_EQ(fault_->Counters().writes, writes + 1);
  EXPECT_EQ(fault_->Counters().syncs, syncs);
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 25);
  // Several in a row, each seen by the reader as it returns.
  for (int i = 1; i <= 3; ++i) {
    ASSERT_GT(InsertRows(writer, 4), 0);
    EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 25 + 4 * i);
  }
  EXPECT_EQ(fault_->Counters().syncs, syncs);
  ASSERT_TRUE(writer.Exec("PRAGMA synchronous=FULL", "full").ok());
  ASSERT_GT(InsertRows(writer, 10), 0);
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 47);
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM pragma_quick_check WHERE quick_check != 'ok'"), 0);
}

// The gathered write of a commit that does not sync fails: no sync would
// report it later, so the commit itself must fail, leave nothing behind,
// and the next one must succeed once space returns.
TEST_F(WalWriteVfsTest, AFailedWriteFailsACommitThatDoesNotSyncAndNothingElse) {
  Connection writer = OpenWriter(/*gather=*/true);
  auto reader = Connection::Open(path_, "");
  ASSERT_TRUE(reader.ok());
  ASSERT_GT(InsertRows(writer, 20), 0);
  ASSERT_TRUE(writer.Exec("PRAGMA synchronous=NORMAL", "normal").ok());
  fault_->FailWrite(1, FaultError::kDiskFull);
  EXPECT_FALSE(writer.Exec("DELETE FROM t WHERE k % 2 = 0", "delete").ok());
  EXPECT_EQ(fault_->Counters().faults_injected, 1);
  fault_->ClearFaults();
  EXPECT_EQ(QueryInt(writer, "SELECT count(*) FROM t"), 20);
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 20);
  ASSERT_TRUE(writer.Exec("DELETE FROM t WHERE k % 2 = 0", "delete again").ok());
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM t"), 10);
  EXPECT_EQ(QueryInt(*reader, "SELECT count(*) FROM pragma_quick_check WHERE quick_check != 'ok'"), 0);
}

// A transaction larger than the page cache writes frames before it commits
// and reads them back: the reads must see the gathered bytes.
TEST_F(WalWriteVfsTest, ATransactionLargerThanThePageCacheReadsItsOwnFramesBack) {
  Connection db = OpenWriter(/*gather=*/true, /*cache_pages=*/20);
  ASSERT_TRUE(db.Exec("BEGIN", "begin").ok());
  ASSERT_TRUE(db.Exec("INSERT INTO t(k, v) SELECT value, printf('%0300d', value) FROM "
                      "(WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < 3000) "
                      "SELECT value FROM n)",
                      "insert")
                  .ok());
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t WHERE CAST(v AS INTEGER) = k"), 3000);
  ASSERT_TRUE(db.Exec("COMMIT", "commit").ok());
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t WHERE CAST(v AS INTEGER) = k"), 3000);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM pragma_quick_check WHERE quick_check != 'ok'"), 0);
}

// The gathered write fails at the commit's sync: the commit fails, nothing
// of it stays, and the next commit succeeds once space returns.
TEST_F(WalWriteVfsTest, AFailedGatheredWriteFailsItsCommitAndNothingElse) {
  Connection db = OpenWriter(/*gather=*/true);
  ASSERT_GT(InsertRows(db, 20), 0);
  fault_->FailWrite(1, FaultError::kDiskFull);
  EXPECT_EQ(InsertRows(db, 100), -1);
  EXPECT_EQ(fault_->Counters().faults_injected, 1);
  fault_->ClearFaults();
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t"), 20);
  ASSERT_GT(InsertRows(db, 30), 0);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM t"), 50);
  EXPECT_EQ(QueryInt(db, "SELECT count(*) FROM pragma_quick_check WHERE quick_check != 'ok'"), 0);
}

// What a power cut keeps is what the syncs made durable: every commit that
// returned, each of whose gathered frames must have reached the file before
// its sync.
TEST_F(WalWriteVfsTest, APowerCutKeepsEveryCommitThatReturned) {
  {
    Connection db = OpenWriter(/*gather=*/true);
    for (int i = 0; i < 10; ++i) ASSERT_GT(InsertRows(db, 37), 0);
    fault_->CutPowerAtSync(1, ws::testing::CutTiming::kBeforeSync);
    EXPECT_EQ(InsertRows(db, 5), -1);
    EXPECT_TRUE(fault_->Counters().power_lost);
  }
  ASSERT_TRUE(fault_->PowerCycle().ok());
  auto db = Connection::Open(path_, "");
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(QueryInt(*db, "SELECT count(*) FROM t"), 370);
  EXPECT_EQ(QueryInt(*db, "SELECT count(*) FROM pragma_quick_check WHERE quick_check != 'ok'"), 0);
}

TEST_F(WalWriteVfsTest, AnUnknownBaseIsRefused) {
  auto name = WalWriteVfs("no-such-vfs");
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace ws::sqlite
