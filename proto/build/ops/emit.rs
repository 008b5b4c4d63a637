//! Writes Rust for a schema union (`model::Union`): the domain enum with its
//! docs, and the converters between it and the Cap'n Proto form.
//!
//! The generated converters call, for every struct `S` and enum `E` a field
//! uses, `write_s`/`read_s` and `write_e`/`read_e` (snake-cased names) from
//! `convert::types`, and the helpers of `convert` (`text`, `required`,
//! `in_field`, `len_u32`, `indexed`).

use std::fmt::Write;

use super::model::{Body, Field, Member, Ty, Union};

/// Where one union goes in Rust.
pub struct Target {
    /// The schema struct's module in the capnp output (`request`).
    pub module: &'static str,
    /// The domain enum (`MetaRequest`).
    pub rust_enum: &'static str,
    /// Names of the generated writer and reader.
    pub writer: &'static str,
    pub reader: &'static str,
    /// A member that carries an error instead of a value, and the function
    /// reading it: the reader then returns `Result<Result<Enum, MetaError>>`.
    pub error: Option<(&'static str, &'static str)>,
    /// Generate `is_write` (members without `$noLog`).
    pub is_write: bool,
}

/// Names the generated code uses itself; a field may not take one.
const RESERVED: [&str; 6] = ["b", "g", "r", "list", "index", "item"];

pub fn snake(camel: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

fn upper_camel(camel: &str) -> String {
    let mut c = camel.chars();
    match c.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn doc(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.is_empty() {
            let _ = writeln!(out, "{indent}///");
        } else {
            let _ = writeln!(out, "{indent}/// {line}");
        }
    }
}

fn rust_type(f: &Field) -> String {
    let t = ty_name(&f.ty);
    if f.optional {
        format!("Option<{t}>")
    } else {
        t
    }
}

fn ty_name(t: &Ty) -> String {
    match t {
        Ty::Prim(p) => (*p).to_owned(),
        Ty::Text => "String".into(),
        Ty::Data => "Vec<u8>".into(),
        Ty::Enum(n) | Ty::Struct(n) => n.clone(),
        Ty::List(e) => format!("Vec<{}>", ty_name(e)),
    }
}

fn members<'a>(u: &'a Union, t: &Target) -> impl Iterator<Item = &'a Member> {
    let error = t.error.map(|e| e.0);
    u.members
        .iter()
        .filter(move |m| Some(m.name.as_str()) != error)
}

fn check_names(u: &Union) -> Result<(), String> {
    for m in &u.members {
        if let Body::Group(fields) = &m.body {
            for f in fields {
                if RESERVED.contains(&snake(&f.name).as_str()) {
                    return Err(format!(
                        "field `{}.{}`: the name is reserved",
                        m.name, f.name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The domain enum (and `is_write`).
pub fn domain(u: &Union, t: &Target) -> Result<String, String> {
    check_names(u)?;
    let mut out = String::new();
    doc(&mut out, "", &u.doc);
    out.push_str("#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]\n");
    let _ = writeln!(out, "pub enum {} {{", t.rust_enum);
    for m in members(u, t) {
        doc(&mut out, "    ", &m.doc);
        let variant = upper_camel(&m.name);
        match &m.body {
            Body::Void => {
                let _ = writeln!(out, "    {variant},");
            }
            Body::Value(f) => {
                let _ = writeln!(out, "    {variant}({}),", rust_type(f));
            }
            Body::Group(fields) => {
                let _ = writeln!(out, "    {variant} {{");
                for f in fields {
                    doc(&mut out, "        ", &f.doc);
                    let _ = writeln!(out, "        {}: {},", snake(&f.name), rust_type(f));
                }
                out.push_str("    },\n");
            }
        }
    }
    out.push_str("}\n");
    if t.is_write {
        let unlogged: Vec<String> = members(u, t)
            .filter(|m| m.no_log)
            .map(|m| pattern(t.rust_enum, m))
            .collect();
        let _ = writeln!(
            out,
            "\nimpl {e} {{\n    /// Whether the request changes state (goes through the Raft log):\n    \
             /// every operation the schema does not mark `$noLog`.\n    \
             pub fn is_write(&self) -> bool {{\n        !matches!(\n            self,\n            {}\n        )\n    }}\n}}",
            unlogged.join("\n                | "),
            e = t.rust_enum,
        );
    }
    Ok(out)
}

fn pattern(rust_enum: &str, m: &Member) -> String {
    let v = upper_camel(&m.name);
    match m.body {
        Body::Void => format!("{rust_enum}::{v}"),
        Body::Value(_) => format!("{rust_enum}::{v}(..)"),
        Body::Group(_) => format!("{rust_enum}::{v} {{ .. }}"),
    }
}

/// The statement writing value `v` (a reference) into field `f` of `recv`.
fn write_stmt(recv: &str, f: &Field, v: &str) -> String {
    let name = snake(&f.name);
    match &f.ty {
        Ty::Prim(_) => format!("{recv}.set_{name}(*{v});"),
        Ty::Text => format!("{recv}.set_{name}({v}.as_str());"),
        Ty::Data => format!("{recv}.set_{name}({v});"),
        Ty::Enum(e) => format!("{recv}.set_{name}(write_{}(*{v}));", snake(e)),
        Ty::Struct(s) if f.optional => format!(
            "if let Some(item) = {v} {{ write_{}(item, {recv}.reborrow().init_{name}()); }}",
            snake(s)
        ),
        Ty::Struct(s) => format!("write_{}({v}, {recv}.reborrow().init_{name}());", snake(s)),
        Ty::List(e) => {
            let set = match &**e {
                Ty::Struct(s) => format!("write_{}(item, list.reborrow().get(index));", snake(s)),
                Ty::Text => "list.set(index, item.as_str());".to_owned(),
                _ => "list.set(index, *item);".to_owned(),
            };
            format!(
                "{{ let mut list = {recv}.reborrow().init_{name}(len_u32({v}.len())); \
                 for (index, item) in indexed({v}) {{ {set} }} }}"
            )
        }
    }
}

/// The expression reading field `f`: `get` gives its value, `has` whether
/// a pointer is set; `what` names it in errors.
fn read_expr(get: &str, has: &str, f: &Field, what: &str) -> String {
    match &f.ty {
        Ty::Prim(_) => get.to_owned(),
        Ty::Text => format!("text({get}, \"{what}\")?"),
        Ty::Data => format!("{get}.map_err(in_field(\"{what}\"))?.to_vec()"),
        Ty::Enum(e) => format!("read_{}({get}, \"{what}\")?", snake(e)),
        Ty::Struct(s) if f.optional => format!(
            "if {has} {{ Some(read_{}({get}.map_err(in_field(\"{what}\"))?)?) }} else {{ None }}",
            snake(s)
        ),
        Ty::Struct(s) => format!(
            "read_{}(required({has}, {get}, \"{what}\")?)?",
            snake(s)
        ),
        Ty::List(e) => match &**e {
            Ty::Struct(s) => format!(
                "{get}.map_err(in_field(\"{what}\"))?.iter().map(read_{}).collect::<Result<Vec<_>>>()?",
                snake(s)
            ),
            Ty::Text => format!(
                "{get}.map_err(in_field(\"{what}\"))?.iter().map(|t| text(t, \"{what}\")).collect::<Result<Vec<_>>>()?"
            ),
            _ => format!("{get}.map_err(in_field(\"{what}\"))?.iter().collect()"),
        },
    }
}

/// The writer and reader of the union.
pub fn convert(u: &Union, t: &Target) -> Result<String, String> {
    check_names(u)?;
    let e = t.rust_enum;
    let m = t.module;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/// Writes `v` into an (empty) `{}` struct.\n#[allow(unused_mut)]\n\
         pub fn {}(v: &{e}, mut b: mc::{m}::Builder<'_>) {{\n    match v {{",
        upper_camel(m),
        t.writer,
    );
    for mem in members(u, t) {
        let variant = upper_camel(&mem.name);
        let member = snake(&mem.name);
        match &mem.body {
            Body::Void => {
                let _ = writeln!(out, "        {e}::{variant} => b.set_{member}(()),");
            }
            Body::Value(f) => {
                let _ = writeln!(
                    out,
                    "        {e}::{variant}(v) => {{ {} }}",
                    write_stmt("b", f, "v")
                );
            }
            Body::Group(fields) => {
                let names: Vec<String> = fields.iter().map(|f| snake(&f.name)).collect();
                let _ = writeln!(
                    out,
                    "        {e}::{variant} {{ {} }} => {{\n            let mut g = b.init_{member}();",
                    names.join(", ")
                );
                for (f, n) in fields.iter().zip(&names) {
                    let _ = writeln!(out, "            {}", write_stmt("g", f, n));
                }
                out.push_str("        }\n");
            }
        }
    }
    out.push_str("    }\n}\n\n");

    let returns = if t.error.is_some() {
        format!("Result<std::result::Result<{e}, MetaError>>")
    } else {
        format!("Result<{e}>")
    };
    let wrap = if t.error.is_some() { "Ok(Ok(" } else { "Ok(" };
    let _ = writeln!(
        out,
        "/// Reads a `{}`; malformed input is an error.\n\
         pub fn {}(r: mc::{m}::Reader<'_>) -> {returns} {{\n    use mc::{m}::Which as W;\n    \
         {wrap}match r.which()? {{",
        upper_camel(m),
        t.reader,
    );
    for mem in &u.members {
        let variant = upper_camel(&mem.name);
        if let Some((name, read)) = t.error {
            if mem.name == name {
                let member = snake(name);
                let _ = writeln!(
                    out,
                    "        W::{variant}(v) => return Ok(Err({read}(required(r.has_{member}(), v, \"{m}.{name}\")?)?)),",
                );
                continue;
            }
        }
        match &mem.body {
            Body::Void => {
                let _ = writeln!(out, "        W::{variant}(()) => {e}::{variant},");
            }
            Body::Value(f) => {
                let what = format!("{m}.{}", f.name);
                let has = format!("r.has_{}()", snake(&f.name));
                let _ = writeln!(
                    out,
                    "        W::{variant}(v) => {e}::{variant}({}),",
                    read_expr("v", &has, f, &what)
                );
            }
            Body::Group(fields) => {
                let _ = writeln!(out, "        W::{variant}(g) => {e}::{variant} {{");
                for f in fields {
                    let what = format!("{}.{}", mem.name, f.name);
                    let name = snake(&f.name);
                    let get = format!("g.get_{name}()");
                    let has = format!("g.has_{name}()");
                    let _ = writeln!(
                        out,
                        "            {name}: {},",
                        read_expr(&get, &has, f, &what)
                    );
                }
                out.push_str("        },\n");
            }
        }
    }
    let close = if t.error.is_some() { "}))" } else { "})" };
    let _ = writeln!(out, "    {close}\n}}");
    Ok(out)
}
