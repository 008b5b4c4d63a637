//! Reads the metadata operations out of the schema compiler's output (the
//! raw `CodeGeneratorRequest`): each member of a struct's union, its doc
//! comment, annotations and fields, as plain data for `emit`.

use std::collections::HashMap;

use capnp::schema_capnp::{code_generator_request, field, node, type_};

/// A field's type, as far as operations use them.
#[derive(Clone, Debug)]
pub enum Ty {
    /// A number or bool: its Rust name (`u64`, `bool`, ...).
    Prim(&'static str),
    Text,
    Data,
    /// A schema enum; the Rust domain enum has the same name.
    Enum(String),
    /// A schema struct; the Rust domain struct has the same name.
    Struct(String),
    /// A list of numbers, texts or structs.
    List(Box<Ty>),
}

#[derive(Debug)]
pub struct Field {
    /// As spelled in the schema (camelCase).
    pub name: String,
    pub doc: String,
    pub ty: Ty,
    /// `$optional`: a struct that may be absent (`Option<T>`).
    pub optional: bool,
}

#[derive(Debug)]
pub enum Body {
    /// `name @n :Void`: a variant without fields.
    Void,
    /// `name @n :T`: a tuple variant holding one value.
    Value(Field),
    /// `name :group { ... }`: a struct variant.
    Group(Vec<Field>),
}

#[derive(Debug)]
pub struct Member {
    /// As spelled in the schema (camelCase).
    pub name: String,
    pub doc: String,
    /// `$noLog`: answered without a Raft log write.
    pub no_log: bool,
    pub body: Body,
}

/// The union of one schema struct, members in declaration order.
#[derive(Debug)]
pub struct Union {
    pub doc: String,
    pub members: Vec<Member>,
}

/// The nodes and doc comments of one compiler run.
pub struct Schema<'a> {
    nodes: HashMap<u64, node::Reader<'a>>,
    docs: HashMap<u64, (String, Vec<String>)>,
    annotations: HashMap<String, u64>,
}

type Result<T> = std::result::Result<T, String>;

fn err(e: capnp::Error) -> String {
    e.to_string()
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String> {
    let t = t.map_err(err)?;
    t.to_str().map(str::to_owned).map_err(|e| e.to_string())
}

impl<'a> Schema<'a> {
    pub fn new(request: code_generator_request::Reader<'a>) -> Result<Self> {
        let mut nodes = HashMap::new();
        let mut annotations = HashMap::new();
        for n in request.get_nodes().map_err(err)? {
            if let Ok(node::Annotation(_)) = n.which() {
                annotations.insert(short_name(n)?, n.get_id());
            }
            nodes.insert(n.get_id(), n);
        }
        let mut docs = HashMap::new();
        for s in request.get_source_info().map_err(err)? {
            let members = s
                .get_members()
                .map_err(err)?
                .iter()
                .map(|m| text(m.get_doc_comment()))
                .collect::<Result<Vec<_>>>()?;
            docs.insert(s.get_id(), (text(s.get_doc_comment())?, members));
        }
        Ok(Schema {
            nodes,
            docs,
            annotations,
        })
    }

    fn node(&self, id: u64) -> Result<node::Reader<'a>> {
        self.nodes
            .get(&id)
            .copied()
            .ok_or_else(|| format!("node {id:#x} is not in the compiler's output"))
    }

    fn find(&self, display_name: &str) -> Result<node::Reader<'a>> {
        for n in self.nodes.values() {
            if text(n.get_display_name())? == display_name {
                return Ok(*n);
            }
        }
        Err(format!("no `{display_name}` in the schema"))
    }

    fn doc(&self, id: u64) -> String {
        self.docs.get(&id).map(|d| d.0.clone()).unwrap_or_default()
    }

    fn member_doc(&self, id: u64, index: usize) -> String {
        self.docs
            .get(&id)
            .and_then(|d| d.1.get(index).cloned())
            .unwrap_or_default()
    }

    fn has_annotation(&self, f: field::Reader<'_>, name: &str) -> Result<bool> {
        let Some(&id) = self.annotations.get(name) else {
            return Ok(false);
        };
        Ok(f.get_annotations()
            .map_err(err)?
            .iter()
            .any(|a| a.get_id() == id))
    }

    /// The union of struct `display_name` (e.g. `metadata.capnp:Request`).
    pub fn union(&self, display_name: &str) -> Result<Union> {
        let n = self.find(display_name)?;
        let mut members = Vec::new();
        for (index, f) in self.fields(n)? {
            if f.get_discriminant_value() == field::NO_DISCRIMINANT {
                continue;
            }
            let name = text(f.get_name())?;
            let body = match f.which().map_err(|e| e.to_string())? {
                field::Group(g) => {
                    let group = self.node(g.get_type_id())?;
                    let mut fields = Vec::new();
                    for (i, gf) in self.fields(group)? {
                        fields.push(self.field(group.get_id(), i, gf)?);
                    }
                    Body::Group(fields)
                }
                field::Slot(s) => match s.get_type().map_err(err)?.which() {
                    Ok(type_::Void(())) => Body::Void,
                    _ => Body::Value(self.field(n.get_id(), index, f)?),
                },
            };
            members.push(Member {
                doc: self.member_doc(n.get_id(), index),
                no_log: self.has_annotation(f, "noLog")?,
                name,
                body,
            });
        }
        Ok(Union {
            doc: self.doc(n.get_id()),
            members,
        })
    }

    /// A struct's fields with their index (what source info is keyed by),
    /// in declaration order.
    fn fields(&self, n: node::Reader<'a>) -> Result<Vec<(usize, field::Reader<'a>)>> {
        let node::Struct(s) = n.which().map_err(|e| e.to_string())? else {
            return Err(format!("`{}` is not a struct", text(n.get_display_name())?));
        };
        let mut fields: Vec<_> = s.get_fields().map_err(err)?.iter().enumerate().collect();
        fields.sort_by_key(|(_, f)| f.get_code_order());
        Ok(fields)
    }

    fn field(&self, scope: u64, index: usize, f: field::Reader<'_>) -> Result<Field> {
        let name = text(f.get_name())?;
        let field::Slot(s) = f.which().map_err(|e| e.to_string())? else {
            return Err(format!(
                "`{name}`: a group inside an operation is not supported"
            ));
        };
        let ty = self
            .ty(s.get_type().map_err(err)?)
            .map_err(|e| format!("`{name}`: {e}"))?;
        let optional = self.has_annotation(f, "optional")?;
        if optional && !matches!(ty, Ty::Struct(_)) {
            return Err(format!("`{name}`: only a struct field may be $optional"));
        }
        Ok(Field {
            doc: self.member_doc(scope, index),
            name,
            ty,
            optional,
        })
    }

    fn ty(&self, t: type_::Reader<'_>) -> Result<Ty> {
        Ok(match t.which().map_err(|e| e.to_string())? {
            type_::Bool(()) => Ty::Prim("bool"),
            type_::Int8(()) => Ty::Prim("i8"),
            type_::Int16(()) => Ty::Prim("i16"),
            type_::Int32(()) => Ty::Prim("i32"),
            type_::Int64(()) => Ty::Prim("i64"),
            type_::Uint8(()) => Ty::Prim("u8"),
            type_::Uint16(()) => Ty::Prim("u16"),
            type_::Uint32(()) => Ty::Prim("u32"),
            type_::Uint64(()) => Ty::Prim("u64"),
            type_::Text(()) => Ty::Text,
            type_::Data(()) => Ty::Data,
            type_::Enum(e) => Ty::Enum(short_name(self.node(e.get_type_id())?)?),
            type_::Struct(s) => Ty::Struct(short_name(self.node(s.get_type_id())?)?),
            type_::List(l) => match self.ty(l.get_element_type().map_err(err)?)? {
                e @ (Ty::Prim(_) | Ty::Text | Ty::Struct(_)) => Ty::List(Box::new(e)),
                e => return Err(format!("lists of {e:?} are not supported")),
            },
            _ => {
                return Err(
                    "only numbers, text, data, enums, structs and lists are supported".into(),
                )
            }
        })
    }
}

/// A node's name without its file and scope (`metadata.capnp:Attr` → `Attr`).
fn short_name(n: node::Reader<'_>) -> Result<String> {
    let full = text(n.get_display_name())?;
    let prefix = n.get_display_name_prefix_length() as usize;
    full.get(prefix..)
        .map(str::to_owned)
        .ok_or_else(|| format!("bad display name `{full}`"))
}
