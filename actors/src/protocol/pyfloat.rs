//! Python's `repr(float)`, because the validator signs the text its `json.dumps` wrote.
//!
//! The signed key-exchange message embeds the timestamp as Python prints it; the miner rebuilds that
//! text from the parsed number (see [`crate::protocol::messages::KeyExchangeRequest`]), as the
//! Python miner does.

/// Formats `value` exactly as CPython's `repr(float)` does (shortest round-trip digits; fixed notation
/// when the decimal exponent is in (-4, 16], scientific otherwise; always a `.0` on integral values).
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits as `d.ddde±x`.
    let sci = format!("{:e}", value.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    // Python's `decpt`: value = 0.d1d2... × 10^decpt.
    let decpt = exp + 1;
    let sign = if value < 0.0 { "-" } else { "" };
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
        let e = decpt - 1;
        let esign = if e < 0 { '-' } else { '+' };
        format!("{mant}e{esign}{:02}", e.abs())
    } else if decpt <= 0 {
        format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
    } else {
        let decpt = decpt as usize;
        if digits.len() <= decpt {
            format!("{}{}.0", digits, "0".repeat(decpt - digits.len()))
        } else {
            format!("{}.{}", &digits[..decpt], &digits[decpt..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_cpython() {
        for (v, s) in [
            (1795565315.0, "1795565315.0"),
            (1795565315.6899786, "1795565315.6899786"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (123.456e-10, "1.23456e-08"),
        ] {
            assert_eq!(python_float_repr(v), s, "{v}");
        }
        // An integral number never prints without its `.0`.
        assert_eq!(python_float_repr("1795565315".parse().unwrap()), "1795565315.0");
        assert_ne!(python_float_repr(1795565315.0), "1795565315");
    }
}
