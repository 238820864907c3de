//! What `/proc` says about a process: its state, parent, process group and
//! start time. Read fresh every time; nothing is cached.

use std::fs;

/// The fields of `/proc/PID/stat` liveroll uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// Clock ticks after boot: with the pid, it names a process for good
    /// (a pid can be reused, the pair cannot).
    pub start_ticks: u64,
}

impl Stat {
    /// Exited: only a zombie (or nothing) is left, which holds no port.
    pub fn exited(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// `/proc/PID/stat`, or `None` if there is no such process.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command name may hold spaces and parentheses, so fields are counted
/// after its last `)`: state is field 3, ppid 4, pgrp 5, starttime 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
    })
}

/// Whether process `pid` has exited (gone, or only a zombie left).
pub fn process_gone(pid: i32) -> bool {
    stat(pid).is_none_or(|s| s.exited())
}

/// Whether process `pid`'s environment holds `entry` (`NAME=value`).
/// Processes of other users cannot be read, and count as not holding it.
pub fn environ_has(pid: i32, entry: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
}

/// Every process there is now, with its stat.
pub fn all() -> impl Iterator<Item = (i32, Stat)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        let text = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 123456 1 2";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 7,
                pgrp: 42,
                start_ticks: 123456
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn own_process_is_alive_and_a_missing_one_is_gone() {
        let me = std::process::id() as i32;
        assert!(!process_gone(me));
        assert!(all().any(|(pid, _)| pid == me));
        assert!(process_gone(i32::MAX));
        let path = std::env::var("PATH").unwrap();
        assert!(environ_has(me, &format!("PATH={path}")));
        assert!(!environ_has(me, "PATH=/nowhere/at/all"));
    }
}
