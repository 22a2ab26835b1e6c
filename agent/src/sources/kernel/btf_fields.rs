//! Where a few kernel struct members are, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`). Rust eBPF has no CO-RE relocations, so the loader hands the probes
//! these offsets as globals instead. Only what that needs is decoded: type kinds and their sizes,
//! struct and union members, and names.

/// The kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bytes of a type's common part: name_off, info, size_or_type (`struct btf_type`).
const TYPE_LEN: usize = 12;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Offsets in `struct task_struct` of `sched_info.pcount` and `sched_info.run_delay`: the
/// kernel's count of a task's runs and of the nanoseconds it waited on a run queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunDelayOffsets {
    pub pcount: u32,
    pub run_delay: u32,
}

/// The run-queue count's offsets in the kernel's BTF; why not, when they are not there (a kernel
/// built without `CONFIG_SCHED_INFO`) or the BTF cannot be read.
pub fn run_delay_offsets_in(btf: &[u8]) -> Result<RunDelayOffsets, String> {
    let types = Types::parse(btf)?;
    let task = types.named_struct("task_struct")?;
    let member = |path: &[&str]| {
        let (offset, type_id) = types.member(task, path)?;
        let size = types.size(type_id)?;
        if size != 8 {
            return Err(format!("task_struct.{} is {size} bytes, not 8", path.join(".")));
        }
        Ok(offset)
    };
    Ok(RunDelayOffsets { pcount: member(&["sched_info", "pcount"])?, run_delay: member(&["sched_info", "run_delay"])? })
}

/// One type: its kind, name, `size_or_type`, and where its members are (structs and unions).
#[derive(Clone, Copy)]
struct Type {
    kind: u32,
    kind_flag: bool,
    name: u32,
    size_or_type: u32,
    vlen: usize,
    /// Offset of what follows the common part, in `Types::data`.
    extra: usize,
}

struct Types<'a> {
    data: &'a [u8],
    strings: &'a [u8],
    /// Where each type starts in `data`, indexed by type id less one (id 0 is void). Types are
    /// decoded when looked at: the kernel has over 100,000.
    starts: Vec<u32>,
}

/// The type whose common part starts at `at`.
fn decode(data: &[u8], at: usize) -> Result<Type, String> {
    let info = u32_at(data, at + 4)?;
    Ok(Type {
        kind: (info >> 24) & 0x1f,
        kind_flag: info >> 31 != 0,
        name: u32_at(data, at)?,
        size_or_type: u32_at(data, at + 8)?,
        vlen: (info & 0xffff) as usize,
        extra: at + TYPE_LEN,
    })
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("BTF ends inside a field at byte {at}"))
}

impl<'a> Types<'a> {
    fn parse(btf: &'a [u8]) -> Result<Types<'a>, String> {
        let magic = btf.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if magic != Some(BTF_MAGIC) {
            return Err("not BTF of this machine's byte order (bad magic)".to_owned());
        }
        let header_len = u32_at(btf, 4)? as usize;
        let section = |offset_at: usize, len_at: usize| -> Result<&'a [u8], String> {
            let start = header_len.max(HEADER_LEN) + u32_at(btf, offset_at)? as usize;
            let len = u32_at(btf, len_at)? as usize;
            btf.get(start..start + len).ok_or_else(|| "a BTF section runs past the end of the file".to_owned())
        };
        let data = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let ty = decode(data, at)?;
            let extra = match ty.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * ty.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * ty.vlen,
                kind if kind <= KIND_ENUM64 => 0,
                kind => return Err(format!("unknown BTF kind {kind} at type {}", starts.len() + 1)),
            };
            starts.push(at as u32);
            at += TYPE_LEN + extra;
        }
        Ok(Types { data, strings, starts })
    }

    fn get(&self, id: u32) -> Result<Type, String> {
        let start =
            (id as usize).checked_sub(1).and_then(|i| self.starts.get(i)).ok_or_else(|| format!("no BTF type {id}"))?;
        decode(self.data, *start as usize)
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The id of the struct called `name` that has members (not a forward declaration).
    fn named_struct(&self, name: &str) -> Result<u32, String> {
        (1..=self.starts.len() as u32)
            .find(|&id| {
                self.get(id).is_ok_and(|t| t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name) == name.as_bytes())
            })
            .ok_or_else(|| format!("the kernel's BTF has no struct {name}"))
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32, String> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            if !matches!(ty.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) {
                return Ok(id);
            }
            id = ty.size_or_type;
        }
        Err(format!("BTF type {id}: a chain of typedefs too long"))
    }

    fn size(&self, id: u32) -> Result<u32, String> {
        let ty = self.get(self.resolve(id)?)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Ok(ty.size_or_type),
            kind => Err(format!("BTF type {id} (kind {kind}) has no size of its own")),
        }
    }

    /// Byte offset and type of the member at `path` inside struct or union `id`, looking into
    /// anonymous structs and unions on the way as C does.
    fn member(&self, id: u32, path: &[&str]) -> Result<(u32, u32), String> {
        let Some((first, rest)) = path.split_first() else {
            return Err("an empty member path".to_owned());
        };
        let (offset, type_id) =
            self.find_member(id, first)?.ok_or_else(|| format!("no member {first} (kernel without it?)"))?;
        if rest.is_empty() {
            return Ok((offset, type_id));
        }
        let (inner, inner_type) = self.member(self.resolve(type_id)?, rest)?;
        Ok((offset + inner, inner_type))
    }

    fn find_member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>, String> {
        let ty = self.get(id)?;
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return Err(format!("BTF type {id} is not a struct or union"));
        }
        for index in 0..ty.vlen {
            let at = ty.extra + 12 * index;
            let (member_name, member_type, raw_offset) =
                (u32_at(self.data, at)?, u32_at(self.data, at + 4)?, u32_at(self.data, at + 8)?);
            // With kind_flag, the top 8 bits are a bitfield's size.
            let bits = if ty.kind_flag { raw_offset & 0x00ff_ffff } else { raw_offset };
            if member_name != 0 {
                if self.name(member_name) == name.as_bytes() {
                    if bits % 8 != 0 {
                        return Err(format!("member {name} is a bitfield"));
                    }
                    return Ok(Some((bits / 8, member_type)));
                }
                continue;
            }
            let anonymous = self.resolve(member_type)?;
            if matches!(self.get(anonymous)?.kind, KIND_STRUCT | KIND_UNION)
                && let Some((inner, inner_type)) = self.find_member(anonymous, name)?
            {
                return Ok(Some((bits / 8 + inner, inner_type)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A type for `build`: name, kind, kind_flag, size_or_type, the extra words of non-member
    /// kinds, and members as (name, type id, offset word).
    struct T<'a>(&'a str, u32, bool, u32, Vec<u32>, Vec<(&'a str, u32, u32)>);

    fn build(types: &[T]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |name: &str| -> u32 {
            if name.is_empty() {
                return 0;
            }
            let at = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            at
        };
        let mut data = Vec::new();
        for T(name, kind, kind_flag, size_or_type, extra, members) in types {
            let info = (u32::from(*kind_flag) << 31) | (kind << 24) | members.len() as u32;
            let mut words = vec![intern(name), info, *size_or_type];
            words.extend(extra);
            for (member, type_id, offset) in members {
                words.extend([intern(member), *type_id, *offset]);
            }
            data.extend(words.iter().flat_map(|w| w.to_ne_bytes()));
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [HEADER_LEN as u32, 0, data.len() as u32, data.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend(data);
        out.extend(strings);
        out
    }

    /// `task_struct` with `sched_info` inside an anonymous struct (as randomized layouts have it),
    /// `run_delay` behind a typedef, and a forward declaration of `task_struct` first.
    fn kernel_like(pcount_size: u32) -> Vec<u8> {
        build(&[
            T("long unsigned int", KIND_INT, false, pcount_size, vec![pcount_size * 8], vec![]), // 1
            T("u64", KIND_TYPEDEF, false, 7, vec![], vec![]),                                    // 2
            T("int", KIND_INT, false, 4, vec![32], vec![]),                                      // 3
            T("sched_info", KIND_STRUCT, false, 16, vec![], vec![("pcount", 1, 0), ("run_delay", 2, 64)]), // 4
            T("", KIND_STRUCT, false, 24, vec![], vec![("flags", 3, 0), ("sched_info", 4, 64)]), // 5
            T("task_struct", KIND_STRUCT, false, 0, vec![], vec![]),                             // 6: forward
            T("long long unsigned int", KIND_INT, false, 8, vec![64], vec![]),                   // 7
            T("task_struct", KIND_STRUCT, false, 2048, vec![], vec![("pid", 3, 0), ("", 5, 8000)]), // 8
        ])
    }

    #[test]
    fn finds_sched_info_through_an_anonymous_struct_and_a_typedef() {
        let offsets = run_delay_offsets_in(&kernel_like(8)).expect("offsets");
        assert_eq!(offsets, RunDelayOffsets { pcount: 1000 + 8, run_delay: 1000 + 16 });
    }

    #[test]
    fn refuses_members_of_the_wrong_size_or_missing() {
        let error = run_delay_offsets_in(&kernel_like(4)).expect_err("a 4-byte pcount");
        assert!(error.contains("pcount is 4 bytes"), "{error}");
        let without = build(&[
            T("int", KIND_INT, false, 4, vec![32], vec![]),
            T("task_struct", KIND_STRUCT, false, 8, vec![], vec![("pid", 1, 0)]),
        ]);
        let error = run_delay_offsets_in(&without).expect_err("no sched_info");
        assert!(error.contains("no member sched_info"), "{error}");
    }

    #[test]
    fn bad_btf_is_an_error_not_a_panic() {
        let good = kernel_like(8);
        for cut in [0, 1, 10, HEADER_LEN, HEADER_LEN + 5, good.len() - 3] {
            assert!(run_delay_offsets_in(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut unknown_kind = good.clone();
        unknown_kind[HEADER_LEN + 7] = 0x1f; // the first type's kind byte (native little-endian)
        assert!(run_delay_offsets_in(&unknown_kind).is_err());
    }

    /// The running kernel's BTF has them, side by side as `struct sched_info` lays them out (that
    /// they are the right fields is checked end to end against `/proc/<pid>/schedstat`).
    #[test]
    fn the_running_kernel_has_them() {
        let btf = std::fs::read(VMLINUX_BTF).expect("kernel BTF (CONFIG_DEBUG_INFO_BTF)");
        let offsets = run_delay_offsets_in(&btf).expect("task_struct.sched_info in the kernel's BTF");
        assert_eq!(offsets.run_delay, offsets.pcount + 8, "{offsets:?}");
    }
}
