//! Sending one command as a list of strings through the `redis` crate, and what tests expect
//! of its answer.

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisResult, Value};

/// `args` as one command, its answer as `T`.
pub async fn q<T: FromRedisValue>(con: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con).await
}

/// The answer to `args`, which must not be an error.
pub async fn ok(con: &mut MultiplexedConnection, args: &[&str]) -> Value {
    q(con, args).await.unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// The error `args` must answer, as text.
pub async fn err(con: &mut MultiplexedConnection, args: &[&str]) -> String {
    match q::<Value>(con, args).await {
        Ok(v) => panic!("{args:?} should fail, answered {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// A bulk string reply.
pub fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}
