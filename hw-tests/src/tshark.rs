//! Check an NVMe/TCP packet capture with Wireshark's dissector (`tshark`),
//! which knows the PDU formats independently of our code: a PDU it cannot
//! parse, a bad digest or any protocol-level expert warning is a bug.
//!
//! TCP-level expert infos (window full, zero window, RST at teardown) are
//! reported but not counted as problems: the kernel's own initiator and
//! target produce them on loopback too.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::host::run_with_timeout;

/// PDU type names (NVMe/TCP transport spec, PDU type field).
pub fn pdu_type_name(t: u8) -> &'static str {
    match t {
        0 => "ICReq",
        1 => "ICResp",
        2 => "H2CTermReq",
        3 => "C2HTermReq",
        4 => "CapsuleCmd",
        5 => "CapsuleResp",
        6 => "H2CData",
        7 => "C2HData",
        9 => "R2T",
        _ => "unknown",
    }
}

/// What tshark made of a capture.
#[derive(Debug, Default)]
pub struct Analysis {
    /// NVMe/TCP PDUs seen, by PDU type.
    pub pdu_types: BTreeMap<u8, usize>,
    /// PDUs whose header or data digest tshark found wrong.
    pub bad_digests: usize,
    /// PDUs whose header or data digest tshark verified as good.
    pub good_digests: usize,
    /// C2HData PDUs flagged SUCCESS: each also completes its command, in
    /// place of a CapsuleResp (the controller does this when the host
    /// disabled SQ flow control).
    pub c2h_success: usize,
    /// Non-TCP expert infos at warning level or above, and malformed packets.
    pub problems: Vec<String>,
    /// TCP-level expert infos (informational only).
    pub tcp_notes: Vec<String>,
}

impl Analysis {
    pub fn total_pdus(&self) -> usize {
        self.pdu_types.values().sum()
    }

    pub fn count(&self, pdu_type: u8) -> usize {
        self.pdu_types.get(&pdu_type).copied().unwrap_or(0)
    }

    /// One line per PDU type, for test logs.
    pub fn summary(&self) -> String {
        self.pdu_types.iter().map(|(t, n)| format!("{}={n}", pdu_type_name(*t))).collect::<Vec<_>>().join(" ")
    }
}

/// Dissect `pcap`, decoding the given TCP ports as NVMe/TCP, with header and
/// data digest verification on.
pub fn analyze(tshark: &Path, pcap: &Path, ports: &[u16]) -> Result<Analysis> {
    let mut base: Vec<String> = vec![
        "-n".into(),
        "-r".into(),
        pcap.display().to_string(),
        "-o".into(),
        "nvme-tcp.check_hdgst:TRUE".into(),
        "-o".into(),
        "nvme-tcp.check_ddgst:TRUE".into(),
    ];
    for p in ports {
        base.push("-d".into());
        base.push(format!("tcp.port=={p},nvme-tcp"));
    }
    let run = |extra: &[&str]| -> Result<String> {
        let mut cmd = Command::new(tshark);
        cmd.args(&base).args(extra);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("tshark {extra:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    let mut a = Analysis::default();
    // One line per frame; a frame can carry several PDUs (comma-separated).
    let fields = run(&[
        "-Y",
        "nvme-tcp",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-e",
        "nvme-tcp.type",
        "-e",
        "nvme-tcp.hdgst.status",
        "-e",
        "nvme-tcp.ddgst.status",
        "-e",
        "nvme-tcp.flags.pdu.data_success",
    ])?;
    for line in fields.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let col = |i: usize| cols.get(i).copied().unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty());
        for t in col(0) {
            if let Ok(t) = t.parse::<u8>() {
                *a.pdu_types.entry(t).or_default() += 1;
            }
        }
        a.c2h_success += col(3).filter(|v| *v == "1" || v.eq_ignore_ascii_case("true")).count();
        for status in col(1).chain(col(2)) {
            // Wireshark's checksum status: 0 bad, 1 good, 2 unverified,
            // 3 not present. A bad digest raises no expert info in this
            // dissector, so it must be counted here.
            match status {
                "0" => a.bad_digests += 1,
                "1" => a.good_digests += 1,
                _ => {}
            }
        }
    }

    // The expert table lists every warning/error with its protocol; that is
    // what lets TCP's loopback noise be told apart from NVMe/TCP problems.
    let experts = run(&["-q", "-z", "expert,warn"])?;
    for line in experts.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[0].parse::<u64>().is_err() {
            continue;
        }
        let (group, proto) = (cols[1], cols[2]);
        let text = cols.join(" ");
        if proto.eq_ignore_ascii_case("TCP") && group != "Malformed" {
            a.tcp_notes.push(text);
        } else {
            a.problems.push(text);
        }
    }
    Ok(a)
}

/// Frame numbers (1-based) of frames carrying a PDU of `pdu_type` with a
/// checked data digest, largest first.
pub fn frames_with_data_digest(tshark: &Path, pcap: &Path, ports: &[u16], pdu_type: u8) -> Result<Vec<u64>> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-n").arg("-r").arg(pcap);
    for p in ports {
        cmd.arg("-d").arg(format!("tcp.port=={p},nvme-tcp"));
    }
    cmd.args(["-o", "nvme-tcp.check_ddgst:TRUE", "-Y"])
        .arg(format!("nvme-tcp.type == {pdu_type} && nvme-tcp.ddgst"))
        .args(["-T", "fields", "-e", "frame.number", "-e", "frame.len"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    let mut frames: Vec<(u64, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (n, len) = l.split_once('\t')?;
            Some((n.trim().parse().ok()?, len.trim().parse().ok()?))
        })
        .collect();
    frames.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    Ok(frames.into_iter().map(|(n, _)| n).collect())
}

/// Copy a pcapng file, flipping one byte in the middle of frame `frame`
/// (1-based), to prove that the checks above notice corruption. Only
/// Enhanced Packet Blocks count as frames, as in Wireshark.
pub fn corrupt_frame(pcap: &Path, out: &Path, frame: u64) -> Result<()> {
    let mut d = std::fs::read(pcap)?;
    let u32_at = |d: &[u8], i: usize| -> Result<u32> {
        let b: [u8; 4] = d
            .get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("truncated pcapng at {i}"))?;
        // Written on this (little-endian) host by dumpcap.
        Ok(u32::from_le_bytes(b))
    };
    let (mut off, mut n) = (0usize, 0u64);
    while off + 8 <= d.len() {
        let (kind, len) = (u32_at(&d, off)?, u32_at(&d, off + 4)? as usize);
        if len < 12 {
            bail!("bad pcapng block length {len} at {off}");
        }
        if kind == 6 {
            n += 1;
            if n == frame {
                // EPB: type, len, iface, ts_hi, ts_lo, caplen, origlen, data.
                let caplen = u32_at(&d, off + 20)? as usize;
                let i = off + 28 + caplen / 2;
                d[i] ^= 0x5a;
                std::fs::write(out, &d)?;
                return Ok(());
            }
        }
        off += len;
    }
    bail!("frame {frame} not found in {}", pcap.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdu_names_follow_the_spec_numbering() {
        assert_eq!(pdu_type_name(0), "ICReq");
        assert_eq!(pdu_type_name(7), "C2HData");
        assert_eq!(pdu_type_name(9), "R2T");
        assert_eq!(pdu_type_name(8), "unknown");
    }
}
