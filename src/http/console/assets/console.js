// Tollgate console: progressive enhancement only; every page works without it.
// - data-toggle="id": a checkbox shows or hides the fields it switches on.
// - data-chips="name": Enter in the [data-chip-input] beside it adds a recipient chip.
// - data-copy="id": copies that element's text (the secret shown once).
// - data-live="url": refreshes that element from url every 5 s (usage bars).
// - data-confirm="text": asks before posting a form.
// - data-json / data-template-for: JSON syntax check while typing; template picker.
"use strict";
(function () {
  function toggles() {
    document.querySelectorAll("input[data-toggle]").forEach(function (box) {
      var target = document.getElementById(box.dataset.toggle);
      if (!target) return;
      var sync = function () { target.hidden = !box.checked; };
      box.addEventListener("change", sync);
      sync();
    });
  }
  function chip(list, value) {
    var span = document.createElement("span");
    span.className = "chip";
    span.textContent = value;
    var hidden = document.createElement("input");
    hidden.type = "hidden"; hidden.name = list.dataset.chips; hidden.value = value;
    var remove = document.createElement("button");
    remove.type = "button"; remove.className = "link"; remove.textContent = "\u00d7";
    remove.setAttribute("aria-label", "Remove " + value);
    remove.dataset.remove = "";
    span.append(hidden, remove);
    list.append(span);
  }
  function chips() {
    document.querySelectorAll("[data-chips]").forEach(function (list) {
      var input = list.parentElement.querySelector("[data-chip-input]");
      list.addEventListener("click", function (e) {
        if (e.target.matches("[data-remove]")) e.target.closest(".chip").remove();
      });
      if (!input) return;
      input.addEventListener("keydown", function (e) {
        if (e.key !== "Enter") return;
        e.preventDefault();
        input.value.split(/[\s,]+/).filter(Boolean).forEach(function (v) { chip(list, v); });
        input.value = "";
      });
    });
  }
  function copies() {
    document.querySelectorAll("[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var el = document.getElementById(b.dataset.copy);
        if (!el || !navigator.clipboard) return;
        navigator.clipboard.writeText(el.textContent).then(function () { b.textContent = "Copied"; });
      });
    });
  }
  function live() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      setInterval(function () {
        if (document.hidden) return;
        fetch(el.dataset.live, { headers: { "x-console-fragment": "1" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) {
            if (html === null) return;
            var doc = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
            el.replaceChildren.apply(el, Array.from(doc.body.firstChild.childNodes));
          })
          .catch(function () {});
      }, 5000);
    });
  }
  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) { if (!window.confirm(f.dataset.confirm)) e.preventDefault(); });
    });
  }
  function json() {
    document.querySelectorAll("textarea[data-json]").forEach(function (t) {
      var out = document.getElementById(t.getAttribute("aria-describedby"));
      var check = function () {
        try { JSON.parse(t.value); out.textContent = "Valid JSON"; t.removeAttribute("aria-invalid"); }
        catch (err) { out.textContent = "Not valid JSON: " + err.message; t.setAttribute("aria-invalid", "true"); }
      };
      t.addEventListener("input", check);
    });
    document.querySelectorAll("select[data-template-for]").forEach(function (s) {
      s.addEventListener("change", function () {
        var t = document.getElementById(s.dataset.templateFor);
        if (t && s.value) { t.value = s.value; t.dispatchEvent(new Event("input")); }
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    toggles(); chips(); copies(); live(); confirms(); json();
  });
})();
