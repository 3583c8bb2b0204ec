//! `CLUSTER`: `KEYSLOT` (a key's Redis Cluster hash slot, which crema's shards are cut by) and
//! `HELP`. The rest of Redis Cluster's subcommands answer as a Redis without cluster mode does,
//! so cluster-aware clients see a standalone server and use it as one.

use super::{Call, CmdError};
use crate::resp::Reply;

pub(super) fn run(call: &Call<'_>) -> Result<Reply, CmdError> {
    match (call.option(1).as_str(), call.args.len()) {
        ("KEYSLOT", 3) => Ok(Reply::Integer(i64::from(crema::key_slot(call.arg(2))))),
        ("KEYSLOT", _) => Err(CmdError::Arity("cluster|keyslot".into())),
        ("HELP", 2) => Ok(Reply::Array(
            [
                "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "KEYSLOT <key>",
                "    Return the hash slot for <key>.",
                "HELP",
                "    Print this help.",
            ]
            .iter()
            .map(|line| Reply::Simple(line))
            .collect(),
        )),
        _ => Err(CmdError::Invalid("This instance has cluster support disabled".into())),
    }
}
