/* VokaFlow console: refreshes the page's live fragment every 2 s while the tab is visible.
   The server renders the fragment (?partial=1); this only swaps it in. No dependencies. */
(function () {
  "use strict";
  var INTERVAL = 2000;
  document.documentElement.classList.add("js");

  // The submit form: picking another task reloads the form with that task's arguments.
  document.addEventListener("change", function (event) {
    var select = event.target.closest("select[data-choose]");
    if (select) { window.location.search = "?task=" + encodeURIComponent(select.value); }
  });

  var live = document.querySelector("[data-live]");
  var state = document.getElementById("live-state");
  if (!live || !live.children.length) { return; }
  var inFlight = false;

  function mark(text, cls) {
    if (!state) { return; }
    state.textContent = text;
    state.className = "live-state " + cls;
  }

  function busyWithForm() {
    var el = document.activeElement;
    return el && live.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function refresh() {
    if (document.hidden || inFlight || busyWithForm()) { return; }
    var url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    inFlight = true;
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (response.redirected) { window.location.reload(); return null; }  // logged out
        if (!response.ok) { throw new Error(response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        live.innerHTML = html;
        live.dataset.refreshed = String(Date.now());
        mark("live " + new Date().toLocaleTimeString(), "ok");
      })
      .catch(function () { mark("stale: server not answering", "bad"); })
      .finally(function () { inFlight = false; });
  }

  mark("live", "ok");
  window.setInterval(refresh, INTERVAL);
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { mark("paused (tab hidden)", "muted"); } else { refresh(); }
  });
})();
