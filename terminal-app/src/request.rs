//! What a point-of-sale or a person asks for, as text: the request types
//! the local API (`POST /v1/intents`, docs/terminal-api.yaml) and the CLI
//! (`pay 12.50 CNY`, `order --cart cart.json`, `kiosk`) both read, and the
//! one conversion from a request to an [`Intent`] checked against the
//! terminal's [`Terms`] — so both refuse the same requests with the same
//! codes.
//!
//! ```
//! use tapstack_terminal::request::IntentRequest;
//! let r: IntentRequest =
//!     serde_json::from_str(r#"{"kind":"pay","amount":"12.50","currency":"CNY"}"#).unwrap();
//! assert_eq!(r, IntentRequest::Pay { amount: "12.50".into(), currency: "CNY".into() });
//! ```

use serde::{Deserialize, Serialize};
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, MAX_CART_ITEMS, MAX_SITE};

use crate::tap::{Decline, Intent, Terms};

/// A tap intent as asked for. Amounts are decimal strings in the currency
/// named beside them ("12.50"), never JSON numbers: a float cannot carry
/// money exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum IntentRequest {
    Pay {
        amount: String,
        currency: String,
    },
    Order {
        cart: CartRequest,
    },
    /// `site` defaults to the kiosk's (`[kiosk] site`).
    Pickup {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        site: Option<String>,
    },
}

/// An itemized cart: the API's `cart` object and the CLI's cart file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartRequest {
    pub currency: String,
    pub items: Vec<CartLine>,
}

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartLine {
    pub sku: String,
    pub name: String,
    pub qty: u32,
    /// Unit price, a decimal string such as "8.00".
    pub price: String,
}

/// Why a request is refused before any phone is asked for: a stable code
/// (the same as the API's and the CLI's `[code]`) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    /// A decline before any phone, with its limit explained.
    pub fn decline(terms: &Terms, d: &Decline) -> Self {
        Refusal::new(d.code(), terms.explain(d))
    }
}

/// `text` as an amount in `currency`; `name` says where it came from.
pub fn parse_amount(text: &str, name: &str, currency: Currency) -> Result<Amount, Refusal> {
    Amount::parse(text, currency).ok_or_else(|| {
        Refusal::new(
            "bad_amount",
            format!(
                "{name} {text:?} is not an amount in {currency}: digits, at most {} decimals, no sign or exponent",
                currency.exponent()
            ),
        )
    })
}

/// `text` as the terminal's currency: an ISO 4217 code, and the one the
/// terminal takes (checked before any amount is read in its minor units).
pub fn parse_currency(terms: &Terms, text: &str, name: &str) -> Result<Currency, Refusal> {
    let currency =
        Currency::parse(text).map_err(|e| Refusal::new("bad_currency", format!("{name}: {e}")))?;
    terms
        .check_currency(currency)
        .map_err(|d| Refusal::new(d.code(), d.to_string()))?;
    Ok(currency)
}

impl CartRequest {
    /// The cart, its prices read in its currency (which must be the
    /// terminal's); `at` prefixes the field names in messages (`cart.`).
    pub fn to_cart(&self, terms: &Terms, at: &str) -> Result<Cart, Refusal> {
        let currency = parse_currency(terms, &self.currency, &format!("{at}currency"))?;
        if self.items.is_empty() || self.items.len() > MAX_CART_ITEMS {
            return Err(Refusal::new(
                "bad_cart",
                format!("a cart has 1 to {MAX_CART_ITEMS} items"),
            ));
        }
        let mut items = Vec::with_capacity(self.items.len());
        for (i, l) in self.items.iter().enumerate() {
            let price = parse_amount(&l.price, &format!("{at}items[{i}].price"), currency)?;
            items.push(CartItem {
                sku: l.sku.clone(),
                name: l.name.clone(),
                qty: l.qty,
                unit_price: price.minor,
            });
        }
        let cart = Cart { currency, items };
        cart.validate().map_err(|e| {
            let message = match at.trim_end_matches('.') {
                "" => e.to_string(),
                what => format!("{what}: {e}"),
            };
            Refusal::new("bad_cart", message)
        })?;
        Ok(cart)
    }
}

impl IntentRequest {
    /// The intent, checked against what this terminal takes (currency,
    /// amounts, cart, an amount above zero and within the floor limit, the
    /// kiosk's site). What needs the queue or the clock is checked later
    /// ([`crate::tap::check_intent`]).
    pub fn to_intent(&self, terms: &Terms, kiosk_site: Option<&str>) -> Result<Intent, Refusal> {
        let intent = match self {
            IntentRequest::Pay { amount, currency } => {
                let currency = parse_currency(terms, currency, "currency")?;
                Intent::Pay {
                    amount: parse_amount(amount, "amount", currency)?,
                }
            }
            IntentRequest::Order { cart } => Intent::Order {
                cart: cart.to_cart(terms, "cart.")?,
            },
            IntentRequest::Pickup { site } => {
                let site = match (site, kiosk_site) {
                    (Some(s), _) => s.clone(),
                    (None, Some(k)) => k.to_owned(),
                    (None, None) => {
                        return Err(Refusal::new(
                            "missing_field",
                            "site is required (no [kiosk] site configured)",
                        ))
                    }
                };
                if site.is_empty() || site.len() > MAX_SITE || site.chars().any(char::is_control) {
                    return Err(Refusal::new(
                        "bad_site",
                        format!("site must be 1 to {MAX_SITE} bytes of text"),
                    ));
                }
                if let Some(k) = kiosk_site.filter(|k| *k != site) {
                    return Err(Refusal::new(
                        "wrong_site",
                        format!("this kiosk is {k}, not {site}"),
                    ));
                }
                Intent::Pickup { site }
            }
        };
        terms
            .check_request(&intent)
            .map_err(|d| Refusal::decline(terms, &d))?;
        Ok(intent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> Terms {
        Terms {
            currency: Currency::new("CNY").unwrap(),
            floor_limit: 10_000,
            not_before: 0,
            not_after: u64::MAX,
        }
    }

    fn pay(amount: &str, currency: &str) -> Result<Intent, &'static str> {
        IntentRequest::Pay {
            amount: amount.into(),
            currency: currency.into(),
        }
        .to_intent(&terms(), None)
        .map_err(|r| r.code)
    }

    #[test]
    fn requests_become_intents_or_refusals_with_codes() {
        assert!(matches!(pay("12.50", "CNY"), Ok(Intent::Pay { amount }) if amount.minor == 1250));
        assert_eq!(pay("12.505", "CNY"), Err("bad_amount"));
        assert_eq!(pay("1e3", "CNY"), Err("bad_amount"));
        assert_eq!(pay("0", "CNY"), Err("bad_amount"));
        assert_eq!(pay("12.50", "EUR"), Err("wrong_currency"));
        assert_eq!(pay("12.50", "XYZ"), Err("bad_currency"));
        assert_eq!(pay("100.01", "CNY"), Err("floor_limit"));
        let line = |qty, price: &str| CartLine {
            sku: "T".into(),
            name: "Tea".into(),
            qty,
            price: price.into(),
        };
        let order = |items| {
            IntentRequest::Order {
                cart: CartRequest {
                    currency: "CNY".into(),
                    items,
                },
            }
            .to_intent(&terms(), None)
            .map_err(|r| r.code)
        };
        assert!(
            matches!(order(vec![line(2, "8.00")]), Ok(Intent::Order { cart }) if cart.total() == Some(1600))
        );
        assert_eq!(order(vec![]), Err("bad_cart"));
        assert_eq!(order(vec![line(0, "8.00")]), Err("bad_cart"));
        assert_eq!(order(vec![line(1, "8.001")]), Err("bad_amount"));
        let pickup = |site: Option<&str>, kiosk| {
            IntentRequest::Pickup {
                site: site.map(str::to_owned),
            }
            .to_intent(&terms(), kiosk)
            .map_err(|r| r.code)
        };
        assert!(matches!(pickup(None, Some("L-7")), Ok(Intent::Pickup { site }) if site == "L-7"));
        assert_eq!(pickup(None, None), Err("missing_field"));
        assert_eq!(pickup(Some(""), None), Err("bad_site"));
        assert_eq!(pickup(Some("L-8"), Some("L-7")), Err("wrong_site"));
    }
}
