//! Member offsets of a kernel struct from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the
//! one program that reads a kernel struct directly (`sk_buff`, on kernels where refused
//! connections are only seen as dropped packets). Rust eBPF programs carry no CO-RE relocations,
//! so the agent looks the offsets up and hands them over like the tracepoint layouts.
//!
//! Only what that needs: the type section is walked once, structs and unions are searched by
//! member name through anonymous members (the kernel groups `sk_buff`'s headers in unnamed
//! structs and unions), and bitfield members are refused.

/// What the BTF did not give.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data ({0})")]
    Format(&'static str),
    #[error("BTF type {id} has unknown kind {kind}")]
    Kind { id: u32, kind: u32 },
    #[error("no struct `{0}` in the kernel's BTF")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}` in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("`{strukt}.{member}` is a bitfield")]
    Bitfield { strukt: String, member: String },
    #[error("`{strukt}.{member}` has size {size}, expected {expected}")]
    Size {
        strukt: String,
        member: String,
        size: u32,
        expected: u32,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type of the type section, with where its members start.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    /// Size (ints, structs, unions, enums) or referenced type id (pointers, typedefs, modifiers).
    size_or_ref: u32,
    /// Byte offset of what follows the common header (members, array info, …).
    extra: usize,
}

impl Type {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// A parsed BTF blob: its types (index = type id) and string section.
pub struct Btf<'a> {
    data: &'a [u8],
    types: Vec<Type>,
    strings: &'a [u8],
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob (what `/sys/kernel/btf/vmlinux` holds on x86_64/arm64).
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let short = BtfError::Format("too short");
        let magic = u16::from_le_bytes(data.get(0..2).ok_or(short)?.try_into().unwrap_or([0; 2]));
        if magic != MAGIC {
            return Err(BtfError::Format("bad magic"));
        }
        let field = |at| u32_at(data, at).ok_or(BtfError::Format("header cut short"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?).map(|_| start)
        };
        let types_start = section(type_off, type_len).ok_or(BtfError::Format("type section"))?;
        let strings_start = section(str_off, str_len).ok_or(BtfError::Format("string section"))?;
        let strings = &data[strings_start..strings_start + str_len];
        // Type id 0 is `void`; ids count from 1 in order.
        let mut types = vec![Type {
            name_off: 0,
            info: 0,
            size_or_ref: 0,
            extra: 0,
        }];
        let end = types_start + type_len;
        let mut at = types_start;
        while at < end {
            let cut = BtfError::Format("type cut short");
            let t = Type {
                name_off: u32_at(data, at).ok_or(cut.clone())?,
                info: u32_at(data, at + 4).ok_or(cut.clone())?,
                size_or_ref: u32_at(data, at + 8).ok_or(cut)?,
                extra: at + 12,
            };
            let vlen = t.vlen();
            let extra = match t.kind() {
                KIND_INT | 14 | 17 => 4,                    // int encoding, var, decl_tag
                KIND_ARRAY => 12,                           // elem type, index type, nelems
                KIND_STRUCT | KIND_UNION | 15 => vlen * 12, // members; datasec entries
                KIND_ENUM | 13 => vlen * 8,                 // enum values; func_proto params
                KIND_ENUM64 => vlen * 12,
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12
                | 16 | KIND_TYPE_TAG => 0, // fwd, func, float
                kind => {
                    return Err(BtfError::Kind {
                        id: u32::try_from(types.len()).unwrap_or(u32::MAX),
                        kind,
                    });
                }
            };
            types.push(t);
            at = t.extra + extra;
        }
        Ok(Self {
            data,
            types,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The type `id` with typedefs and qualifiers looked through.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = *self.types.get(id as usize)?;
            match t.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_ref;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Size in bytes of a resolved type (pointers are 8: this reads 64-bit kernels' BTF).
    fn size(t: Type) -> u32 {
        match t.kind() {
            KIND_PTR => 8,
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => t.size_or_ref,
            _ => 0,
        }
    }

    /// `(byte offset, size)` of `member` inside struct `strukt`, searching anonymous members.
    pub fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let s = self
            .types
            .iter()
            .find(|t| t.kind() == KIND_STRUCT && self.name(t.name_off) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        let (bits, size, bitfield) = self.find(*s, member.as_bytes(), 0).ok_or_else(no_member)?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            });
        }
        Ok((bits / 8, size))
    }

    /// (bit offset, byte size, is a bitfield) of `name` in the struct or union `t`, recursing
    /// into unnamed struct and union members (bounded depth).
    fn find(&self, t: Type, name: &[u8], depth: u32) -> Option<(u32, u32, bool)> {
        if depth > 8 {
            return None;
        }
        for i in 0..t.vlen() {
            let at = t.extra + i * 12;
            let (m_name, m_type, m_off) = (
                u32_at(self.data, at)?,
                u32_at(self.data, at + 4)?,
                u32_at(self.data, at + 8)?,
            );
            // With kind_flag the offset's top 8 bits are a bitfield size.
            let (bit_off, bitfield_size) = if t.kind_flag() {
                (m_off & 0x00ff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            let resolved = self.resolve(m_type)?;
            if m_name == 0 && matches!(resolved.kind(), KIND_STRUCT | KIND_UNION) {
                if let Some((off, size, bf)) = self.find(resolved, name, depth + 1) {
                    return Some((bit_off + off, size, bf));
                }
            } else if self.name(m_name) == name {
                return Some((bit_off, Self::size(resolved), bitfield_size != 0));
            }
        }
        None
    }
}

/// Reads `struct.member` offsets of the running kernel, checking each member's size.
pub fn offsets(data: &[u8], strukt: &str, members: &[(&str, u32)]) -> Result<Vec<u32>, BtfError> {
    let btf = Btf::parse(data)?;
    members
        .iter()
        .map(|&(member, expected)| {
            let (off, size) = btf.member(strukt, member)?;
            if size != expected {
                return Err(BtfError::Size {
                    strukt: strukt.to_owned(),
                    member: member.to_owned(),
                    size,
                    expected,
                });
            }
            Ok(off)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_ref, extra words) types.
    fn blob(strings: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, info, st, extra) in types {
            for w in [*name, *info, *st].iter().chain(extra) {
                t.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut s = vec![0u8];
        for x in strings {
            s.extend_from_slice(x.as_bytes());
            s.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, t.len() as u32, t.len() as u32, s.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend(t);
        out.extend(s);
        out
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    /// `struct sk_buff { union { struct { u16 transport_header; u16 network_header; }; u64 x; };
    /// typedef'd char *head; }` with names at: 1 "sk_buff", 9 "transport_header",
    /// 26 "network_header", 41 "head", 46 "u16", 50 "x".
    fn skb_like() -> Vec<u8> {
        let strings = [
            "sk_buff",
            "transport_header",
            "network_header",
            "head",
            "u16",
            "x",
        ];
        blob(
            &strings,
            &[
                (46, info(KIND_INT, 0), 2, vec![16]),                   // 1: u16
                (0, info(KIND_STRUCT, 2), 4, vec![9, 1, 0, 26, 1, 16]), // 2: anon struct
                (0, info(KIND_UNION, 2), 8, vec![0, 2, 0, 50, 6, 0]),   // 3: anon union
                (0, info(KIND_PTR, 0), 1, vec![]),                      // 4: u16 *
                (0, info(KIND_CONST, 0), 4, vec![]),                    // 5: const u16 *
                (46, info(KIND_INT, 0), 8, vec![64]),                   // 6: u64
                (1, info(KIND_STRUCT, 2), 24, vec![0, 3, 64, 41, 5, 128]), // 7: sk_buff
            ],
        )
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_qualifiers() {
        let data = skb_like();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member("sk_buff", "transport_header"), Ok((8, 2)));
        assert_eq!(btf.member("sk_buff", "network_header"), Ok((10, 2)));
        assert_eq!(btf.member("sk_buff", "head"), Ok((16, 8)));
        assert_eq!(
            offsets(&data, "sk_buff", &[("head", 8), ("network_header", 2)]),
            Ok(vec![16, 10])
        );
        assert!(matches!(
            btf.member("sk_buff", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("sock", "head"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            offsets(&data, "sk_buff", &[("head", 2)]),
            Err(BtfError::Size {
                size: 8,
                expected: 2,
                ..
            })
        ));
    }

    #[test]
    fn cut_or_foreign_data_is_an_error_not_a_panic() {
        let data = skb_like();
        for len in 0..data.len() {
            let _ = Btf::parse(&data[..len]).map(|b| b.member("sk_buff", "head"));
        }
        assert_eq!(
            Btf::parse(b"\x7fELF").err(),
            Some(BtfError::Format("bad magic"))
        );
        let mut odd = data.clone();
        odd[24 + 7] = 30; // type 1's kind (the top byte of its info word)
        assert!(matches!(
            Btf::parse(&odd),
            Err(BtfError::Kind { id: 1, kind: 30 })
        ));
    }

    #[test]
    fn the_running_kernels_sk_buff_is_found() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("this machine's kernel has BTF");
        let off = offsets(
            &data,
            "sk_buff",
            &[("head", 8), ("network_header", 2), ("transport_header", 2)],
        )
        .unwrap();
        assert!(off.iter().all(|&o| o > 0 && o < 256), "{off:?}");
    }
}
