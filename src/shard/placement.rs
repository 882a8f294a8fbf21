//! Where shards run and which shard takes a connection. Run once by the
//! main thread at start-up (CPU set) and by shard 0 when it listens (the
//! reuseport selector); no state.
//!
//! Shard `i` is pinned to the `i`-th CPU of the process's affinity mask
//! (sched_getaffinity, as `taskset`, cpusets or a container runtime set it),
//! wrapping round it when there are more shards than allowed CPUs: pinning
//! to CPU `i` itself would put three `taskset -c N ringtail serve --cores 1`
//! nodes all on CPU 0, outside the CPUs they were given.
//!
//! The kernel picks the SO_REUSEPORT listener of a new connection with a
//! classic BPF program that maps the CPU which took its SYN to the shard
//! pinned to that CPU, so that a connection is served on the core already
//! handling its packets. A CPU outside the allowed set (an interrupt
//! routed elsewhere) maps to `cpu % shards`.

use std::os::fd::RawFd;

/// The CPUs this process may run on, in ascending order; never empty
/// (CPU 0 when the mask cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// The CPU shard `shard` is pinned to: the `shard`-th allowed CPU, wrapping.
pub fn cpu_of_shard(shard: usize, allowed: &[usize]) -> usize {
    allowed[shard % allowed.len()]
}

/// Whether connections can be steered by CPU: each shard has a CPU of its
/// own (with two shards on one CPU the CPU names no single shard, and the
/// kernel's hash spreads them instead).
pub fn steerable(shards: usize, allowed: &[usize]) -> bool {
    shards > 1 && shards <= allowed.len()
}

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_ALU_MOD_K: u16 = 0x94;
const BPF_RET_K: u16 = 0x06;
const BPF_RET_A: u16 = 0x16;
/// SKF_AD_OFF + SKF_AD_CPU: loads the number of the CPU running the filter.
const SKF_AD_CPU: u32 = (-0x1000i32 + 36) as u32;
/// The kernel's BPF_MAXINSNS.
const BPF_MAX_INSTRUCTIONS: usize = 4096;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The reuseport selector: `A = cpu; if A == cpu_of_shard(0) return 0; ...;
/// return A % shards`. `None` when it would exceed the kernel's program
/// length (thousands of shards).
pub fn steering_program(shards: usize, allowed: &[usize]) -> Option<Vec<libc::sock_filter>> {
    let length = 1 + 2 * shards + 2;
    if length > BPF_MAX_INSTRUCTIONS || shards == 0 {
        return None;
    }
    let mut program = Vec::with_capacity(length);
    program.push(op(BPF_LD_W_ABS, 0, 0, SKF_AD_CPU));
    for shard in 0..shards {
        let cpu = cpu_of_shard(shard, allowed) as u32;
        // Equal: fall through to the return; else skip it.
        program.push(op(BPF_JMP_JEQ_K, 0, 1, cpu));
        program.push(op(BPF_RET_K, 0, 0, shard as u32));
    }
    program.push(op(BPF_ALU_MOD_K, 0, 0, shards as u32));
    program.push(op(BPF_RET_A, 0, 0, 0));
    Some(program)
}

/// Attaches [`steering_program`] to a socket of the reuseport group.
pub fn steer_by_cpu(fd: RawFd, shards: usize, allowed: &[usize]) -> std::io::Result<()> {
    let Some(mut program) = steering_program(shards, allowed) else {
        return Err(std::io::Error::other("too many shards for a CPU map"));
    };
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: fprog points at `program`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of classic BPF the selector uses, for a given CPU.
    fn run(program: &[libc::sock_filter], cpu: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    assert_eq!(i.k, SKF_AD_CPU);
                    a = cpu;
                }
                BPF_JMP_JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                BPF_ALU_MOD_K => a %= i.k,
                BPF_RET_K => return i.k,
                BPF_RET_A => return a,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn shards_take_the_allowed_cpus_in_order_and_wrap() {
        let allowed = [1, 3, 6];
        let cpus: Vec<usize> = (0..5).map(|s| cpu_of_shard(s, &allowed)).collect();
        assert_eq!(cpus, [1, 3, 6, 1, 3]);
        assert_eq!(cpu_of_shard(0, &[1]), 1);
    }

    #[test]
    fn a_connection_goes_to_the_shard_pinned_to_its_cpu() {
        let allowed = [2, 5, 7];
        let program = steering_program(3, &allowed).unwrap();
        for (shard, &cpu) in allowed.iter().enumerate() {
            assert_eq!(run(&program, cpu as u32), shard as u32);
        }
        // CPUs outside the set still land on some shard.
        assert_eq!(run(&program, 0), 0);
        assert_eq!(run(&program, 4), 1);
        // With the set 0..n the map is the identity.
        let program = steering_program(4, &[0, 1, 2, 3]).unwrap();
        assert!((0..4).all(|cpu| run(&program, cpu) == cpu));
    }

    #[test]
    fn steering_needs_a_cpu_per_shard() {
        assert!(!steerable(1, &[0, 1]));
        assert!(steerable(2, &[4, 9]));
        assert!(!steerable(3, &[4, 9]));
        assert!(steering_program(3000, &[0]).is_none());
    }
}
