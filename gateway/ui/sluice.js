// Sluice's portal: the little the pages need beyond htmx. Every page works without it for
// reading; this adds live parts (log tail), the CSRF header on htmx's requests, and a file
// picker that fills the stack.yml text area.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // htmx's requests carry the page's CSRF token; a session that ended sends the browser to log in.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });
  document.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr && event.detail.xhr.status === 401) {
      window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
    }
  });

  // A live tail: <pre data-logs-src="..."> is fed the NDJSON lines the gateway streams. The
  // stream is dropped while the tab is hidden (a browser keeps few connections per host) and
  // opened again when it is shown, or a little after the gateway ends it.
  var MAX_LINES = 1000;
  function tail(pre) {
    var src = pre.getAttribute("data-logs-src");
    var status = document.getElementById(pre.getAttribute("data-status") || "");
    var lines = pre.textContent ? pre.textContent.split("\n").filter(Boolean) : [];
    var controller = null;
    var retry = null;
    function show() {
      if (lines.length > MAX_LINES) {
        lines = lines.slice(lines.length - MAX_LINES);
      }
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = lines.join("\n") + (lines.length ? "\n" : "");
      if (atBottom) {
        pre.scrollTop = pre.scrollHeight;
      }
    }
    function say(text) {
      if (status) {
        status.textContent = text;
      }
    }
    function later() {
      if (retry === null && !document.hidden) {
        retry = window.setTimeout(function () {
          retry = null;
          open();
        }, 3000);
      }
    }
    function open() {
      if (controller || document.hidden) {
        return;
      }
      var mine = new AbortController();
      controller = mine;
      fetch(src, { credentials: "same-origin", signal: mine.signal }).then(function (response) {
        if (response.status === 401) {
          window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
          return;
        }
        if (!response.ok || !response.body) {
          say("Live tail unavailable (" + response.status + ").");
          return;
        }
        say("Following new lines.");
        lines = [];
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var pending = "";
        function read() {
          return reader.read().then(function (chunk) {
            if (chunk.done) {
              return;
            }
            pending += decoder.decode(chunk.value, { stream: true });
            var parts = pending.split("\n");
            pending = parts.pop();
            parts.forEach(function (part) {
              if (!part) {
                return;
              }
              try {
                var line = JSON.parse(part);
                lines.push((line.timestamp || "") + " " + (line.instance || "") + " " + (line.text || ""));
              } catch (e) {
                lines.push(part);
              }
            });
            show();
            return read();
          });
        }
        return read();
      }).catch(function () {
        // Aborted (the tab was hidden) or cut off: opened again below when it can be.
      }).then(function () {
        if (controller === mine) {
          controller = null;
          say("Reconnecting to the log stream…");
          later();
        }
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) {
        if (controller) {
          var closing = controller;
          controller = null;
          closing.abort();
        }
        say("Paused while the tab is hidden.");
      } else {
        open();
      }
    });
    open();
  }

  // <input type="file" data-fill="id"> puts the chosen file's text in the text area `id`.
  function filler(input) {
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      var target = document.getElementById(input.getAttribute("data-fill"));
      if (!file || !target) {
        return;
      }
      if (file.size > 1024 * 1024) {
        window.alert("That file is larger than 1 MiB.");
        return;
      }
      file.text().then(function (text) {
        target.value = text;
      });
    });
  }

  function start() {
    document.querySelectorAll("pre[data-logs-src]").forEach(tail);
    document.querySelectorAll("input[type=file][data-fill]").forEach(filler);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
