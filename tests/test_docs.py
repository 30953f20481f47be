"""The API docs work without internet: every asset the pages name is served by the project itself."""

import re
from urllib.parse import urljoin, urlsplit

import pytest
from django.test import Client

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
URL_IN_SCRIPT = re.compile(r"""["'](https?:)?//[^"']+["']""")


def assets(client: Client, page: str) -> list[str]:
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    found = [urljoin(page, url) for url in ASSET.findall(html)]
    for url in found:
        assert not urlsplit(url).netloc, f"{page} loads {url} from another host"
    assert not URL_IN_SCRIPT.search(html), f"{page} names another host: {URL_IN_SCRIPT.search(html).group(0)}"
    return found


@pytest.mark.parametrize("page, bundle", [
    ("/api/docs/", "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"),
    ("/api/redoc/", "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"),
])
def test_the_docs_pages_load_only_assets_of_this_server_and_each_answers(page, bundle, user):
    client = Client()
    client.force_login(user)
    found = assets(client, page)
    assert any(bundle in url for url in found), f"{page} does not load {bundle}: {found}"
    for url in found:
        response = client.get(url)
        assert response.status_code == 200, url
        if "/static/" not in url:  # the page's own settings script
            text = b"".join(response).decode() if response.streaming else response.content.decode()
            assert not URL_IN_SCRIPT.search(text), f"{url} names another host: {URL_IN_SCRIPT.search(text).group(0)}"
