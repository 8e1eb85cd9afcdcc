"""412 (budget exhausted) and 429 (rate limited) as the real SDKs surface them.

Env: TOLLGATE_URL, SPENT_KEY (its token budget is used up), LIMITED_KEY (2 requests per day,
one already made), PROVIDER, MODEL.
"""
import os

import openai
from portkey_ai import Portkey

BASE = os.environ["TOLLGATE_URL"] + "/v1"
MODEL = "@" + os.environ["PROVIDER"] + "/" + os.environ["MODEL"]
MSG = [{"role": "user", "content": "hi"}]


def status_of(fn):
    try:
        fn()
    except Exception as e:  # the SDKs' APIStatusError subclasses
        return getattr(e, "status_code", None), e
    return 200, None


for client in (openai.OpenAI(api_key=os.environ["SPENT_KEY"], base_url=BASE, max_retries=0),
               Portkey(api_key=os.environ["SPENT_KEY"], base_url=BASE)):
    code, err = status_of(lambda: client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7))
    assert code == 412, (code, err)
    assert "budget" in str(err) and "tokens" in str(err), str(err)
    print("412 ok:", type(client).__name__)

oa = openai.OpenAI(api_key=os.environ["LIMITED_KEY"], base_url=BASE, max_retries=0)
code, _ = status_of(lambda: oa.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7))
assert code == 200, code
code, err = status_of(lambda: oa.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7))
assert code == 429, (code, err)
assert isinstance(err, openai.RateLimitError)
assert int(err.response.headers["retry-after"]) >= 1 and err.response.headers["x-should-retry"] == "false"
# With the SDK's default retries, x-should-retry: false stops it from retrying.
retrying = openai.OpenAI(api_key=os.environ["LIMITED_KEY"], base_url=BASE)
code, _ = status_of(lambda: retrying.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7))
assert code == 429, code
pk = Portkey(api_key=os.environ["LIMITED_KEY"], base_url=BASE)
code, err = status_of(lambda: pk.chat.completions.create(model=MODEL, messages=MSG, max_tokens=7))
assert code == 429 and "rate limit" in str(err), (code, err)
print("429 ok")
