//! Scalar functions: the one registration list ([`FUNCS`]), static signatures and dispatch.

pub(crate) mod math;
mod misc;
mod string;

use crate::value::Value;

/// Static type of an expression, as far as the planner can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// Unknown until run time (payload fields, JSON functions...).
    Any,
    Null,
    Bool,
    Int,
    Float,
    /// Int or float.
    Num,
    Str,
    Bytes,
    Array,
}

impl Ty {
    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Any => "any",
            Ty::Null => "null",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Num => "number",
            Ty::Str => "string",
            Ty::Bytes => "bytes",
            Ty::Array => "array",
        }
    }

    /// Whether the type is known to be numeric.
    pub fn is_num(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Num)
    }

    /// Whether the type is not known at plan time.
    pub fn is_dynamic(self) -> bool {
        matches!(self, Ty::Any | Ty::Null)
    }
}

/// What a function parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum P {
    Any,
    Num,
    Int,
    Str,
    /// A string or bytes.
    Data,
}

impl P {
    /// Whether an argument of static type `t` may be passed.
    pub fn accepts(self, t: Ty) -> bool {
        t.is_dynamic()
            || match self {
                P::Any => true,
                P::Num => t.is_num(),
                P::Int => t.is_num(),
                P::Str => t == Ty::Str,
                P::Data => matches!(t, Ty::Str | Ty::Bytes),
            }
    }

    /// Description for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            P::Any => "a value",
            P::Num => "a number",
            P::Int => "an integer",
            P::Str => "a string",
            P::Data => "a string or bytes",
        }
    }
}

/// Every scalar function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Func {
    Abs,
    Ceil,
    Floor,
    Round,
    Sqrt,
    Pow,
    Exp,
    Ln,
    Log10,
    Mod,
    Sign,
    Greatest,
    Least,
    Lower,
    Upper,
    Trim,
    Ltrim,
    Rtrim,
    Length,
    Substring,
    Concat,
    Replace,
    Split,
    StartsWith,
    EndsWith,
    Contains,
    Lpad,
    Rpad,
    FormatTime,
    ParseTime,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    DayOfWeek,
    ToJson,
    ParseJson,
    JsonGet,
    ArrayLength,
    ObjectKeys,
    Md5,
    Sha1,
    Sha256,
    Crc32,
    Base64Encode,
    Base64Decode,
    Hex,
    Coalesce,
    Nullif,
    Ifnull,
}

/// A function's signature.
pub(crate) struct FnSpec {
    /// Lower-case name.
    pub name: &'static str,
    /// What it computes.
    pub func: Func,
    /// Minimum argument count.
    pub min: usize,
    /// Maximum argument count (`usize::MAX` for variadic).
    pub max: usize,
    /// Parameter kinds; the last one repeats for variadic functions.
    pub params: &'static [P],
    /// Static result type.
    pub ret: Ty,
    /// Returns NULL as soon as any argument is NULL.
    pub strict: bool,
}

const V: usize = usize::MAX;

macro_rules! f {
    ($name:literal, $func:ident, $min:expr, $max:expr, [$($p:ident),*], $ret:ident, $strict:expr) => {
        FnSpec { name: $name, func: Func::$func, min: $min, max: $max, params: &[$(P::$p),*], ret: Ty::$ret, strict: $strict }
    };
}

/// The registration list of scalar functions.
pub(crate) static FUNCS: &[FnSpec] = &[
    f!("abs", Abs, 1, 1, [Num], Num, true),
    f!("ceil", Ceil, 1, 1, [Num], Int, true),
    f!("floor", Floor, 1, 1, [Num], Int, true),
    f!("round", Round, 1, 2, [Num, Int], Num, true),
    f!("sqrt", Sqrt, 1, 1, [Num], Float, true),
    f!("pow", Pow, 2, 2, [Num, Num], Float, true),
    f!("exp", Exp, 1, 1, [Num], Float, true),
    f!("ln", Ln, 1, 1, [Num], Float, true),
    f!("log10", Log10, 1, 1, [Num], Float, true),
    f!("mod", Mod, 2, 2, [Num, Num], Num, true),
    f!("sign", Sign, 1, 1, [Num], Int, true),
    f!("greatest", Greatest, 1, V, [Any], Any, false),
    f!("least", Least, 1, V, [Any], Any, false),
    f!("lower", Lower, 1, 1, [Str], Str, true),
    f!("upper", Upper, 1, 1, [Str], Str, true),
    f!("trim", Trim, 1, 1, [Str], Str, true),
    f!("ltrim", Ltrim, 1, 1, [Str], Str, true),
    f!("rtrim", Rtrim, 1, 1, [Str], Str, true),
    f!("length", Length, 1, 1, [Str], Int, true),
    f!("substring", Substring, 2, 3, [Str, Int, Int], Str, true),
    f!("concat", Concat, 1, V, [Any], Str, false),
    f!("replace", Replace, 3, 3, [Str, Str, Str], Str, true),
    f!("split", Split, 2, 2, [Str, Str], Array, true),
    f!("starts_with", StartsWith, 2, 2, [Str, Str], Bool, true),
    f!("ends_with", EndsWith, 2, 2, [Str, Str], Bool, true),
    f!("contains", Contains, 2, 2, [Str, Str], Bool, true),
    f!("lpad", Lpad, 2, 3, [Str, Int, Str], Str, true),
    f!("rpad", Rpad, 2, 3, [Str, Int, Str], Str, true),
    f!("format_time", FormatTime, 2, 2, [Int, Str], Str, true),
    f!("parse_time", ParseTime, 1, 1, [Str], Int, true),
    f!("year", Year, 1, 1, [Int], Int, true),
    f!("month", Month, 1, 1, [Int], Int, true),
    f!("day", Day, 1, 1, [Int], Int, true),
    f!("hour", Hour, 1, 1, [Int], Int, true),
    f!("minute", Minute, 1, 1, [Int], Int, true),
    f!("second", Second, 1, 1, [Int], Int, true),
    f!("day_of_week", DayOfWeek, 1, 1, [Int], Int, true),
    f!("to_json", ToJson, 1, 1, [Any], Str, false),
    f!("parse_json", ParseJson, 1, 1, [Str], Any, true),
    f!("json_get", JsonGet, 2, 2, [Any, Str], Any, true),
    f!("array_length", ArrayLength, 1, 1, [Any], Int, true),
    f!("object_keys", ObjectKeys, 1, 1, [Any], Array, true),
    f!("md5", Md5, 1, 1, [Data], Str, true),
    f!("sha1", Sha1, 1, 1, [Data], Str, true),
    f!("sha256", Sha256, 1, 1, [Data], Str, true),
    f!("crc32", Crc32, 1, 1, [Data], Str, true),
    f!("base64_encode", Base64Encode, 1, 1, [Data], Str, true),
    f!("base64_decode", Base64Decode, 1, 1, [Str], Bytes, true),
    f!("hex", Hex, 1, 1, [Data], Str, true),
    f!("coalesce", Coalesce, 1, V, [Any], Any, false),
    f!("nullif", Nullif, 2, 2, [Any, Any], Any, false),
    f!("ifnull", Ifnull, 2, 2, [Any, Any], Any, false),
];

/// Looks a scalar function up by (case-insensitive) name.
pub(crate) fn lookup(name: &str) -> Option<&'static FnSpec> {
    FUNCS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
}

/// The spec of a function (every [`Func`] is in [`FUNCS`]).
pub(crate) fn spec(func: Func) -> &'static FnSpec {
    FUNCS.iter().find(|f| f.func == func).unwrap_or(&FUNCS[0])
}

/// Calls `func`; the error text is completed with the expression by the caller.
pub(crate) fn call(func: Func, args: &[Value]) -> Result<Value, String> {
    let s = spec(func);
    if s.strict && args.iter().any(Value::is_null) {
        return Ok(Value::Null);
    }
    let name = s.name;
    match func {
        Func::Abs
        | Func::Ceil
        | Func::Floor
        | Func::Round
        | Func::Sqrt
        | Func::Pow
        | Func::Exp
        | Func::Ln
        | Func::Log10
        | Func::Mod
        | Func::Sign
        | Func::Greatest
        | Func::Least => math::call(func, name, args),
        Func::Lower
        | Func::Upper
        | Func::Trim
        | Func::Ltrim
        | Func::Rtrim
        | Func::Length
        | Func::Substring
        | Func::Concat
        | Func::Replace
        | Func::Split
        | Func::StartsWith
        | Func::EndsWith
        | Func::Contains
        | Func::Lpad
        | Func::Rpad => string::call(func, name, args),
        _ => misc::call(func, name, args),
    }
}

/// Checks argument `i` of `func` when it is a constant (not NULL): an
/// argument that makes every call fail whatever the other arguments are is an
/// error when the rule is created, not on every message.
pub(crate) fn check_const_arg(func: Func, name: &str, i: usize, v: &Value) -> Result<(), String> {
    match (func, i) {
        (Func::Round, 1) => math::round_n(want_int(name, v)?).map(drop),
        (Func::Lpad | Func::Rpad, 1) => string::pad_len(name, want_int(name, v)?).map(drop),
        (Func::Substring, 2) if want_int(name, v)? < 0 => {
            Err("substring() length must not be negative".into())
        }
        (Func::Mod, 1) if v.as_f64() == Some(0.0) => Err("division by zero".into()),
        (Func::JsonGet, 1) => misc::check_path(want_str(name, v)?),
        _ => Ok(()),
    }
}

/// The argument as a string, or a type error.
pub(crate) fn want_str<'a>(name: &str, v: &'a Value) -> Result<&'a str, String> {
    match v {
        Value::Str(s) => Ok(s),
        other => Err(format!(
            "{name}() expects a string, found {}",
            other.type_name()
        )),
    }
}

/// The argument as a float, or a type error.
pub(crate) fn want_f64(name: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{name}() expects a number, found {}", v.type_name()))
}

/// The argument as an integer (a float must be whole), or a type error.
pub(crate) fn want_int(name: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(*f as i64),
        other => Err(format!(
            "{name}() expects an integer, found {}",
            other.type_name()
        )),
    }
}

/// The argument's bytes (a string's UTF-8 or raw bytes), or a type error.
pub(crate) fn want_data<'a>(name: &str, v: &'a Value) -> Result<&'a [u8], String> {
    match v {
        Value::Str(s) => Ok(s.as_bytes()),
        Value::Bytes(b) => Ok(b),
        other => Err(format!(
            "{name}() expects a string or bytes, found {}",
            other.type_name()
        )),
    }
}
