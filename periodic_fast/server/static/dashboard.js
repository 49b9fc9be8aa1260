/* The dashboard's script (served at /ui/dashboard.js; no other resource).
 *
 * - keeps the server-rendered overview live (/ui/fragment every 2 s);
 * - draws the last hour per func as inline SVG from GET /api/series;
 * - the job browser (GET /api/jobs, /api/job; POST /api/job/run-now,
 *   /api/job/delete), the dead set (GET /api/dead; POST /api/dead/retry,
 *   /api/dead/delete), retry policies (GET /api/retry) and cron schedules
 *   (GET /api/cron).
 * Refreshing pauses while the tab is hidden.  Writes are JSON POSTs
 * (Content-Type: application/json), which a cross-site form cannot send; a
 * bearer token pasted by the user (auth file on) is kept in sessionStorage.
 * A route that answers 404 or 403 leaves a message in its panel, the rest
 * of the page goes on.  Values from peers are set as text, never as HTML.
 */
(function () {
  "use strict";
  var TOKEN_KEY = "periodic-fast-token";
  var FRAGMENT_EVERY = 2000, JSON_EVERY = 5000, CHART_FUNCS = 12;
  var state = { tab: "overview", jobs: null, dead: null, detail: null };

  // -- small DOM helpers ---------------------------------------------------
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = String(v);
        else if (k === "onclick") node.addEventListener("click", v);
        else node.setAttribute(k, v === true ? "" : String(v));
      });
    }
    function add(c) {
      if (c === null || c === undefined) return;
      if (Array.isArray(c)) c.forEach(add);
      else node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    for (var i = 2; i < arguments.length; i++) add(arguments[i]);
    return node;
  }
  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }
  function fill(box, node) { box.replaceChildren(node); }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function hhmm(epoch) {
    var d = new Date(epoch * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  function stamp(epoch) {
    if (epoch === null || epoch === undefined) return "-";
    var d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
      " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function relative(epoch) {
    if (epoch === null || epoch === undefined) return "";
    var s = Math.round(epoch - Date.now() / 1000), a = Math.abs(s), t;
    if (a < 60) t = a + "s"; else if (a < 3600) t = Math.floor(a / 60) + "m";
    else if (a < 86400) t = Math.floor(a / 3600) + "h"; else t = Math.floor(a / 86400) + "d";
    return s >= 0 ? "in " + t : t + " ago";
  }
  function dur(v) { // a policy's delay: 0.5 s, 30 s, 5m, 6h, 2d
    if (v === null || v === undefined) return "-";
    if (v < 60) return (Math.round(v * 100) / 100) + " s";
    if (v < 3600) return +(v / 60).toFixed(1) + "m";
    if (v < 86400) return +(v / 3600).toFixed(1) + "h";
    return +(v / 86400).toFixed(1) + "d";
  }
  function secs(v) { return v === null || v === undefined ? "-" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " s"; }

  // -- the JSON API ----------------------------------------------------------
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }
  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    var tok = token();
    if (tok) headers["Authorization"] = "Bearer " + tok;
    var init = { method: method, headers: headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.text().then(function (t) {
        var data = null;
        try { data = t ? JSON.parse(t) : null; } catch (e) { data = null; }
        if (!r.ok) {
          var err = new Error((data && data.err) || ("HTTP " + r.status));
          err.status = r.status;
          if (r.status === 401) askToken(err.message);
          throw err;
        }
        return data;
      });
    });
  }
  function query(params) {
    var q = new URLSearchParams();
    Object.keys(params).forEach(function (k) {
      if (params[k] !== "" && params[k] !== null && params[k] !== undefined) q.set(k, params[k]);
    });
    var s = q.toString();
    return s ? "?" + s : "";
  }
  // What a panel shows when its route failed: never a broken page.
  function notice(box, what, err) {
    var msg, bad = true;
    if (err.status === 404) {
      msg = what + ": not available on this server (" + err.message + ")."; bad = false;
    } else if (err.status === 403) {
      msg = what + ": refused (" + err.message + ").";
    } else if (err.status === 401) {
      msg = what + " needs an admin token: paste it above.";
    } else {
      msg = what + ": " + err.message;
    }
    fill(box, el("p", { "class": bad ? "notice bad" : "notice", "data-status": err.status || 0, text: msg }));
  }
  function say(text, bad) {
    var out = $("action-result");
    out.textContent = text;
    out.className = bad ? "bad" : "";
    clearTimeout(say.timer);
    say.timer = setTimeout(function () { out.textContent = ""; }, 6000);
  }
  function act(label, method, path, body, then) {
    return api(method, path, body).then(function (ans) {
      say(label + ": " + (ans && ans.count !== undefined ? ans.count + " job(s)" : "done"));
      if (then) then(ans);
    }, function (err) {
      say(label + " failed: " + err.message + (err.status ? " (HTTP " + err.status + ")" : ""), true);
    });
  }

  // -- token -----------------------------------------------------------------
  function askToken(why) {
    $("token-form").hidden = false;
    $("token-button").hidden = false;
    $("token-why").textContent = why || "";
  }
  $("token-button").addEventListener("click", function () { askToken(""); });
  $("token-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    try { sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim()); } catch (e) { /* private mode */ }
    $("token-input").value = "";
    $("token-form").hidden = true;
    refreshTab();
  });
  $("token-clear").addEventListener("click", function () {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
    $("token-why").textContent = "forgotten";
  });
  if (token()) $("token-button").hidden = false;

  // -- the live overview (server-rendered fragment) ----------------------------
  var refreshState = $("refresh-state"), count = 0;
  function refreshFragment() {
    return fetch("/ui/fragment", { cache: "no-store", headers: token() ? { "Authorization": "Bearer " + token() } : {} })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        $("content").innerHTML = html; // rendered by the server, autoescaped
        count += 1;
        document.body.setAttribute("data-refreshes", String(count));
        refreshState.className = "ok";
        refreshState.textContent = "live · refreshed " + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        refreshState.className = "bad";
        refreshState.textContent = "not refreshed: " + e.message;
      });
  }

  // -- charts --------------------------------------------------------------------
  var W = 240, H = 44;
  function chart(kind, title, values, minute, fmt, extra) {
    var n = values.length, max = 0, total = 0, peak = -1, i;
    var top = extra || values;
    for (i = 0; i < n; i++) {
      var v = top[i];
      if (v !== null && v > max) { max = v; peak = i; }
      if (values[i] !== null) total += values[i];
    }
    var first = minute - (n - 1) * 60, bw = W / n;
    var summary = title + ", last hour: " + (kind === "late" ? "max " + secs(max) : "total " + total) +
      (peak >= 0 && max > 0 ? ", peak " + fmt(max) + " at " + hhmm(first + peak * 60) : "");
    var box = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img", "aria-label": summary });
    var t = svg("title", {}); t.textContent = summary; box.appendChild(t);
    for (i = 0; i < n; i++) {
      var x = (i * bw).toFixed(2), label = hhmm(first + i * 60) + " · ";
      if (extra && extra[i] !== null && max > 0) {
        var hm = Math.max(1, extra[i] / max * (H - 2));
        box.appendChild(svg("rect", { "class": "max", x: x, y: (H - hm).toFixed(2), width: (bw - 0.6).toFixed(2), height: hm.toFixed(2) }));
      }
      if (values[i] !== null && values[i] > 0 && max > 0) {
        var h = Math.max(1, values[i] / max * (H - 2));
        box.appendChild(svg("rect", { "class": "bar", x: x, y: (H - h).toFixed(2), width: (bw - 0.6).toFixed(2), height: h.toFixed(2) }));
      }
      label += kind === "late"
        ? (values[i] === null ? "no job assigned" : "avg " + secs(values[i]) + ", max " + secs(extra[i]))
        : values[i] + " " + title;
      var hit = svg("rect", { "class": "hit", x: x, y: 0, width: bw.toFixed(2), height: H });
      var ht = svg("title", {}); ht.textContent = label; hit.appendChild(ht);
      box.appendChild(hit);
    }
    var last = values[n - 1];
    var now = kind === "late" ? secs(last) : String(last === null ? 0 : last);
    return el("div", { "class": "chart " + kind, "data-kind": kind },
      el("div", { "class": "cap" }, el("span", { text: title }), el("span", null, "now ", el("b", { text: now }))),
      box);
  }
  function drawSeries(data) {
    var funcs = Object.keys(data.funcs), box = $("charts");
    $("series-note").textContent = funcs.length
      ? (data.tracked > funcs.length ? "busiest " + funcs.length + " of " + data.tracked + " funcs" : funcs.length + " func(s)") +
        " · until " + hhmm(data.minute + 60)
      : "";
    if (!funcs.length) {
      fill(box, el("p", { "class": "muted", text: "no job done, failed or assigned in the last hour" }));
      return;
    }
    var cards = funcs.map(function (f) {
      var s = data.funcs[f];
      return el("div", { "class": "chart-card", "data-func": f },
        el("h3", { title: f, text: f }),
        el("div", { "class": "chart-row" },
          chart("done", "done / min", s.done, data.minute, String),
          chart("failed", "failed / min", s.failed, data.minute, String),
          chart("late", "lateness", s.late_avg, data.minute, secs, s.late_max)));
    });
    box.replaceChildren.apply(box, cards);
  }
  function refreshSeries() {
    return api("GET", "/api/series" + query({ limit: CHART_FUNCS }))
      .then(drawSeries, function (err) { notice($("charts"), "The per-minute charts", err); });
  }

  // -- funcs for the pickers -------------------------------------------------------
  function refreshFuncs() {
    return api("GET", "/api/funcs").then(function (all) {
      var list = $("func-list");
      list.replaceChildren.apply(list, Object.keys(all || {}).sort().map(function (f) {
        return el("option", { value: f });
      }));
    }, function () { /* the pickers also take free text */ });
  }

  // -- the job browser ---------------------------------------------------------------
  function jobsParams() {
    var form = $("jobs-form");
    return { func: form.func.value.trim(), state: form.state.value, prefix: form.prefix.value };
  }
  function loadJobs(cursor, keepDetail) {
    var p = jobsParams(), box = $("jobs-result");
    if (!p.func) { fill(box, el("p", { "class": "muted", text: "pick a func" })); return Promise.resolve(); }
    state.jobs = { params: p, cursor: cursor || "", pages: state.jobs && cursor ? state.jobs.pages : [] };
    if (!keepDetail) fill($("job-detail"), el("span"));
    return api("GET", "/api/jobs" + query({ func: p.func, state: p.state, prefix: p.prefix, cursor: cursor || "", limit: 50 }))
      .then(function (ans) { drawJobs(ans, p); }, function (err) { notice(box, "The job browser", err); });
  }
  function drawJobs(ans, p) {
    var box = $("jobs-result"), jobs = ans.jobs || [];
    var rows = jobs.map(function (j) {
      var open = function () { showJob(j.func, j.name); };
      return el("tr", { "data-name": j.name, "class": state.detail && state.detail.name === j.name && state.detail.func === j.func ? "selected" : null },
        el("td", { "class": "name" }, el("a", { href: "#jobs", onclick: function (ev) { ev.preventDefault(); open(); }, text: j.name })),
        el("td", null, el("span", { "class": "state " + j.state, text: j.state })),
        el("td", { title: stamp(j.sched_at), text: relative(j.sched_at) || "-" }),
        el("td", { text: j.count }), el("td", { text: j.timeout ? j.timeout + " s" : "default" }), el("td", { text: j.attempts }),
        el("td", { text: j.args_size }),
        el("td", { "class": "actions" },
          el("button", { type: "button", "class": "small", "data-act": "run-now", onclick: function () { runNow(j.func, j.name); }, text: "run now" }), " ",
          el("button", { type: "button", "class": "small danger", "data-act": "delete", onclick: function () { deleteJob(j.func, j.name); }, text: "delete" })));
    });
    var table = jobs.length
      ? el("table", { id: "jobs" }, el("thead", null, el("tr", null,
          el("th", { text: "name" }), el("th", { text: "state" }), el("th", { text: "due" }),
          el("th", { text: "count" }), el("th", { text: "timeout" }), el("th", { text: "attempts" }),
          el("th", { text: "args bytes" }), el("th", { text: "" }))), el("tbody", null, rows))
      : el("p", { "class": "muted", text: "no " + (p.state === "all" ? "" : p.state + " ") + "job of " + p.func + (p.prefix ? " starting with " + p.prefix : "") });
    var pager = el("div", { "class": "pager" },
      state.jobs.cursor ? el("button", { type: "button", onclick: function () { loadJobs(""); }, text: "first page" }) : null,
      ans.next ? el("button", { type: "button", id: "jobs-next", onclick: function () { loadJobs(ans.next); }, text: "next page" }) : null,
      el("span", { "class": "muted", text: jobs.length + " shown" }));
    box.replaceChildren(table, pager);
  }
  function showJob(func, name) {
    state.detail = { func: func, name: name };
    var box = $("job-detail");
    return api("GET", "/api/job" + query({ func: func, name: name })).then(function (j) {
      var fields = [["func", j.func], ["name", j.name], ["state", j.state], ["due", stamp(j.sched_at) + " (" + relative(j.sched_at) + ")"],
        ["count", j.count], ["timeout", j.timeout ? j.timeout + " s" : "the server's default"], ["attempts", j.attempts],
        ["last failed", j.last_failed_at ? stamp(j.last_failed_at) : "-"], ["last worker", j.last_worker || "-"],
        ["cron", j.cron ? (typeof j.cron === "object" ? JSON.stringify(j.cron) : j.cron) : "-"], ["args", j.args_size + " bytes"]];
      var dl = el("dl", { id: "job-fields" });
      fields.forEach(function (f) { dl.appendChild(el("dt", { text: f[0] })); dl.appendChild(el("dd", { "data-field": f[0], text: f[1] })); });
      dl.appendChild(el("dt", { text: "args preview" }));
      dl.appendChild(el("dd", null, el("pre", { "class": "args", text: j.args_preview || "" })));
      box.replaceChildren(el("h3", { text: "Job " + j.name }), dl, el("p", null,
        el("button", { type: "button", onclick: function () { runNow(j.func, j.name); }, text: "run now" }), " ",
        el("button", { type: "button", "class": "danger", onclick: function () { deleteJob(j.func, j.name); }, text: "delete" })));
      document.querySelectorAll("#jobs tr.selected").forEach(function (r) { r.className = ""; });
    }, function (err) { notice(box, "Job " + name, err); });
  }
  function runNow(func, name) {
    return act("run now " + name, "POST", "/api/job/run-now", { func: func, name: name }, function () { loadJobs(state.jobs && state.jobs.cursor, true); });
  }
  function deleteJob(func, name) {
    if (!window.confirm("Delete job " + name + " of " + func + "?")) return Promise.resolve();
    return act("delete " + name, "POST", "/api/job/delete", { func: func, name: name }, function () {
      if (state.detail && state.detail.name === name) fill($("job-detail"), el("span"));
      loadJobs(state.jobs && state.jobs.cursor);
    });
  }
  $("jobs-form").addEventListener("submit", function (ev) { ev.preventDefault(); loadJobs(""); });

  // -- the dead set ----------------------------------------------------------------------
  function deadParams() {
    var form = $("dead-form");
    return { func: form.func.value.trim(), prefix: form.prefix.value };
  }
  function loadDead(cursor) {
    var p = deadParams(), box = $("dead-result");
    state.dead = { params: p, cursor: cursor || "" };
    return api("GET", "/api/dead" + query({ func: p.func, prefix: p.prefix, cursor: cursor || "", limit: 50 }))
      .then(function (ans) { drawDead(ans, p); }, function (err) { $("dead-total").textContent = ""; notice(box, "The dead set", err); });
  }
  function drawDead(ans, p) {
    var jobs = ans.jobs || [];
    $("dead-total").textContent = ans.total === undefined ? "" : String(ans.total);
    var rows = jobs.map(function (d) {
      var key = { func: d.func, name: d.name };
      return el("tr", { "data-func": d.func, "data-name": d.name },
        el("td", { "class": "name", text: d.func }), el("td", { "class": "name", text: d.name }),
        el("td", { text: d.attempts }), el("td", { title: stamp(d.failed_at), text: relative(d.failed_at) }),
        el("td", { text: d.worker || "-" }), el("td", { text: d.reason || "-" }),
        el("td", null, el("pre", { "class": "args", text: d.args_preview || "" })),
        el("td", { "class": "actions" },
          el("button", { type: "button", "class": "small", "data-act": "retry", onclick: function () {
            act("retry " + d.name, "POST", "/api/dead/retry", key, function () { loadDead(state.dead.cursor); });
          }, text: "retry" }), " ",
          el("button", { type: "button", "class": "small danger", "data-act": "delete", onclick: function () {
            if (!window.confirm("Delete dead job " + d.name + "?")) return;
            act("delete " + d.name, "POST", "/api/dead/delete", key, function () { loadDead(state.dead.cursor); });
          }, text: "delete" })));
    });
    var table = jobs.length
      ? el("table", { id: "dead" }, el("thead", null, el("tr", null,
          el("th", { text: "func" }), el("th", { text: "name" }), el("th", { text: "attempts" }), el("th", { text: "failed" }),
          el("th", { text: "worker" }), el("th", { text: "reason" }), el("th", { text: "args" }), el("th", { text: "" }))), el("tbody", null, rows))
      : el("p", { "class": "muted", text: "the dead set is empty" + (p.func ? " for " + p.func : "") });
    var pager = el("div", { "class": "pager" },
      state.dead.cursor ? el("button", { type: "button", onclick: function () { loadDead(""); }, text: "first page" }) : null,
      ans.next ? el("button", { type: "button", onclick: function () { loadDead(ans.next); }, text: "next page" }) : null);
    $("dead-result").replaceChildren(table, pager);
  }
  function deadAll(what) {
    var p = deadParams(), body = p.func ? { func: p.func, all: true } : { all: true };
    var whom = p.func ? "every dead job of " + p.func : "every dead job of every func";
    if (!window.confirm((what === "retry" ? "Retry " : "Delete ") + whom + "?")) return;
    act(what + " all", "POST", "/api/dead/" + what, body, function () { loadDead(""); });
  }
  $("dead-form").addEventListener("submit", function (ev) { ev.preventDefault(); loadDead(""); });
  $("dead-retry-all").addEventListener("click", function () { deadAll("retry"); });
  $("dead-delete-all").addEventListener("click", function () { deadAll("delete"); });

  // -- retry policies and cron schedules ------------------------------------------------
  function policyRow(name, p) {
    return el("tr", { "data-func": name },
      el("td", { "class": "name", text: name }), el("td", { text: p.max_attempts === 0 ? "unlimited" : p.max_attempts }),
      el("td", { text: dur(p.backoff) }), el("td", { text: "×" + p.factor }), el("td", { text: dur(p.cap) }),
      el("td", { text: p.jitter }));
  }
  function loadRetry() {
    var box = $("retry-result");
    return api("GET", "/api/retry").then(function (ans) {
      var rows = [policyRow("(default)", ans["default"])];
      Object.keys(ans.funcs || {}).sort().forEach(function (f) { rows.push(policyRow(f, ans.funcs[f])); });
      fill(box, el("table", { id: "retry" }, el("thead", null, el("tr", null,
        el("th", { text: "func" }), el("th", { text: "max attempts" }), el("th", { text: "first delay" }),
        el("th", { text: "factor" }), el("th", { text: "cap" }), el("th", { text: "jitter" }))), el("tbody", null, rows)));
    }, function (err) { notice(box, "Retry policies", err); });
  }
  function loadCron() {
    var box = $("cron-result");
    return api("GET", "/api/cron").then(function (ans) {
      var list = ans.schedules || [];
      if (!list.length) { fill(box, el("p", { "class": "muted", text: "no cron schedule" })); return; }
      var rows = list.map(function (c) {
        return el("tr", { "data-func": c.func, "data-name": c.name },
          el("td", { "class": "name", text: c.func }), el("td", { "class": "name", text: c.name }),
          el("td", { "class": "name", text: c.cron }), el("td", { text: c.tz }), el("td", { text: c.missed }),
          el("td", { title: stamp(c.next_run), text: relative(c.next_run) }),
          el("td", null, el("ul", { "class": "runs" }, (c.next_runs || []).map(function (r) { return el("li", { text: r }); }))));
      });
      fill(box, el("table", { id: "cron" }, el("thead", null, el("tr", null,
        el("th", { text: "func" }), el("th", { text: "name" }), el("th", { text: "cron" }), el("th", { text: "tz" }),
        el("th", { text: "missed" }), el("th", { text: "next run" }), el("th", { text: "next runs" }))), el("tbody", null, rows)));
    }, function (err) { notice(box, "Cron schedules", err); });
  }

  // -- tabs and the refresh loop -------------------------------------------------------------
  function showTab(name) {
    if (!$("tab-" + name)) name = "overview";
    state.tab = name;
    document.querySelectorAll("section.tab").forEach(function (s) { s.hidden = s.id !== "tab-" + name; });
    document.querySelectorAll("#tabs a").forEach(function (a) {
      a.setAttribute("aria-selected", a.getAttribute("data-tab") === name ? "true" : "false");
    });
    document.body.setAttribute("data-tab", name);
    refreshTab();
  }
  function refreshTab() {
    if (state.tab === "overview") return Promise.all([refreshFragment(), refreshSeries()]);
    if (state.tab === "jobs") {
      refreshFuncs();
      return state.jobs ? loadJobs(state.jobs.cursor, true) : Promise.resolve();
    }
    if (state.tab === "dead") { refreshFuncs(); return loadDead(state.dead ? state.dead.cursor : ""); }
    return Promise.all([loadRetry(), loadCron()]);
  }
  // The fragment every 2 s, the tab's JSON every 5 s; nothing while hidden.
  var ticks = 0, timer = null;
  function loop() {
    timer = null;
    if (document.hidden) return; // visibilitychange restarts it
    ticks += 1;
    var work;
    if (state.tab === "overview") {
      work = ticks % Math.round(JSON_EVERY / FRAGMENT_EVERY) === 0 ? refreshTab() : refreshFragment();
    } else {
      work = ticks % Math.round(JSON_EVERY / FRAGMENT_EVERY) === 0 ? refreshTab() : Promise.resolve();
    }
    Promise.resolve(work).then(schedule, schedule);
  }
  function schedule() { if (timer === null && !document.hidden) timer = setTimeout(loop, FRAGMENT_EVERY); }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (timer !== null) { clearTimeout(timer); timer = null; }
      refreshState.className = ""; refreshState.textContent = "paused (tab hidden)";
    } else {
      refreshTab(); schedule();
    }
  });
  window.addEventListener("hashchange", function () { showTab(location.hash.slice(1)); });

  // the legacy write forms of the overview (form-encoded POST /, as before)
  document.querySelectorAll("form[data-action]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = $("write-result");
      fetch("/", { method: "POST", body: new URLSearchParams(new FormData(form)) })
        .then(function (r) { return r.text().then(function (t) { out.textContent = r.status + " " + t; }); })
        .catch(function (e) { out.textContent = String(e); });
    });
  });

  refreshState.textContent = "live";
  showTab(location.hash.slice(1) || "overview");
  schedule();
  // for tests and scripts: the page's entry points
  window.periodicDashboard = { showTab: showTab, loadJobs: loadJobs, showJob: showJob, loadDead: loadDead, refresh: refreshTab };
})();
