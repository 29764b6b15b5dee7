//! Bot detection (pipeline step 11): User-Agent matching against the
//! maintained list of the `isbot` crate, with a per-tenant override.

use std::sync::LazyLock;

use http::HeaderMap;
use http::header::USER_AGENT;

use crate::compile::TenantSpec;
use crate::config::schema::{BotAction, BotDetection};

/// The crate's list compiled into one regex; built on first use, or at
/// config load by [`warm_up`] when any bot detection is enabled.
static BOTS: LazyLock<isbot::Bots> = LazyLock::new(isbot::Bots::default);

/// Compiles the bot list now, so the first request does not pay for it.
pub fn warm_up() {
    LazyLock::force(&BOTS);
}

/// Checks whether `user_agent` belongs to a known bot or crawler. A request
/// without a User-Agent is not treated as a bot: health checkers and
/// scripts often send none, and bots that hide are not stopped by this
/// anyway.
pub fn is_bot(user_agent: &str) -> bool {
    !user_agent.trim().is_empty() && BOTS.is_bot(user_agent)
}

/// Returns the setting that applies to a request: the tenant's own when
/// it has one, else the server-wide one.
pub fn effective<'a>(global: &'a BotDetection, tenant: Option<&'a TenantSpec>) -> &'a BotDetection {
    tenant
        .and_then(|tenant| tenant.bot_detection.as_ref())
        .unwrap_or(global)
}

/// Checks whether `setting` turns this request away. `reject` and `static-only`
/// behave alike at this step: static files were served before it, and
/// everything that reaches it is dynamic.
pub fn blocks(setting: &BotDetection, headers: &HeaderMap) -> bool {
    if !setting.enabled || setting.action == BotAction::Ignore {
        return false;
    }
    headers
        .get(USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_bot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const CRAWLERS: [&str; 4] = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)",
    ];
    const BROWSERS: [&str; 3] = [
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ];

    fn with_agent(agent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_str(agent).unwrap());
        headers
    }

    #[test]
    fn crawlers_detected_browsers_not() {
        for agent in CRAWLERS {
            assert!(is_bot(agent), "{agent}");
        }
        for agent in BROWSERS {
            assert!(!is_bot(agent), "{agent}");
        }
        assert!(!is_bot(""));
    }

    #[test]
    fn actions_and_enabled_flag() {
        let crawler = with_agent(CRAWLERS[0]);
        let browser = with_agent(BROWSERS[0]);
        let setting = |enabled, action| BotDetection { enabled, action };
        assert!(blocks(&setting(true, BotAction::Reject), &crawler));
        assert!(blocks(&setting(true, BotAction::StaticOnly), &crawler));
        assert!(!blocks(&setting(true, BotAction::Ignore), &crawler));
        assert!(!blocks(&setting(false, BotAction::Reject), &crawler));
        assert!(!blocks(&setting(true, BotAction::Reject), &browser));
        assert!(!blocks(
            &setting(true, BotAction::Reject),
            &HeaderMap::new()
        ));
    }
}
