// The preview page: keeps itself up to date from the server's events, never reloading whole.
//
// On every "render" event the page fetches itself again and swaps in each [data-slot]
// element; the two frames only reload (keeping their scroll position). The email's bytes
// are never changed: "dark mode" adds a style element to the frame's document after it
// loads, "block images" asks the server for the same bytes under a header that forbids
// loading images, so the frames show the alt text the way a mail client does.
"use strict";

(() => {
  let token = document.querySelector('meta[name="preview-token"]').content;
  let version = Number(document.body.dataset.version);

  // An approximation of a client that inverts colours (Outlook, Gmail apps): invert
  // everything, then invert pictures back so that they look as they are.
  const DARK_CSS =
    "html{filter:invert(1) hue-rotate(180deg);background:#fff}" +
    "img,picture,video,[background],[style*='background-image']" +
    "{filter:invert(1) hue-rotate(180deg)}";
  // Phones draw scrollbars over the content, taking no width from it.
  const PHONE_CSS = "html{scrollbar-width:none}";

  const switches = {};
  for (const input of document.querySelectorAll("input[data-switch]")) {
    switches[input.dataset.switch] = input;
    input.checked = remembered(input.dataset.switch);
    input.addEventListener("change", () => {
      remember(input.dataset.switch, input.checked);
      if (input.dataset.switch === "images") frames().forEach(load);
      else frames().forEach(decorate);
    });
  }

  function remembered(name) {
    try {
      return window.localStorage.getItem("newsletter-preview-" + name) === "1";
    } catch {
      return false;
    }
  }

  function remember(name, on) {
    try {
      window.localStorage.setItem("newsletter-preview-" + name, on ? "1" : "0");
    } catch {
      // Private windows may refuse; the switch still works for this page.
    }
  }

  function frames() {
    return Array.from(document.querySelectorAll("iframe[data-frame]"));
  }

  function frameUrl(frame) {
    const url = new URL(frame.dataset.src, window.location.href);
    url.searchParams.set("v", String(version));
    if (switches.images && switches.images.checked) url.searchParams.set("images", "off");
    return url.pathname + url.search;
  }

  function load(frame) {
    if (!frame.dataset.bound) {
      frame.dataset.bound = "1";
      frame.addEventListener("load", () => loaded(frame));
    }
    try {
      frame.dataset.scroll = String(frame.contentWindow.scrollY || 0);
    } catch {
      frame.dataset.scroll = "0";
    }
    frame.dataset.pending = String(version);
    frame.src = frameUrl(frame);
  }

  function loaded(frame) {
    decorate(frame);
    const y = Number(frame.dataset.scroll || 0);
    if (y && frame.contentWindow) frame.contentWindow.scrollTo(0, y);
    // Tests and people can tell which version a frame shows.
    frame.dataset.loaded = frame.dataset.pending || "";
  }

  function decorate(frame) {
    const doc = frame.contentDocument;
    if (!doc || !doc.documentElement) return;
    let style = doc.getElementById("newsletter-preview-style");
    if (!style) {
      style = doc.createElement("style");
      style.id = "newsletter-preview-style";
      (doc.head || doc.documentElement).appendChild(style);
    }
    style.textContent =
      (frame.dataset.frame === "phone" ? PHONE_CSS : "") +
      (switches.dark && switches.dark.checked ? DARK_CSS : "");
    // A link followed inside the frame would replace the email: open it beside the page.
    for (const link of doc.querySelectorAll("a[href]")) {
      link.target = "_blank";
      link.rel = "noopener noreferrer";
    }
  }

  let refreshing = false;
  let again = false;

  async function refresh() {
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    try {
      do {
        again = false;
        const response = await fetch(window.location.pathname + window.location.search, {
          cache: "no-store",
        });
        const html = await response.text();
        swap(new DOMParser().parseFromString(html, "text/html"));
      } while (again);
    } catch {
      setLive("off");
    } finally {
      refreshing = false;
    }
  }

  function swap(doc) {
    version = Number(doc.body.dataset.version);
    document.body.dataset.version = doc.body.dataset.version;
    // A restarted server has a new token: the send-test button must use the current one.
    token = doc.querySelector('meta[name="preview-token"]').content;
    document.body.dataset.state = doc.body.dataset.state;
    document.title = doc.title;
    for (const fresh of doc.querySelectorAll("[data-slot]")) {
      const name = fresh.dataset.slot;
      const current = document.querySelector('[data-slot="' + name + '"]');
      if (!current) continue;
      const sameFrames =
        name === "frames" &&
        current.dataset.key === fresh.dataset.key &&
        current.children.length === fresh.children.length;
      if (!sameFrames) current.replaceWith(document.adoptNode(fresh));
    }
    frames().forEach(load);
  }

  const live = document.querySelector("[data-live]");
  function setLive(state) {
    if (live) live.dataset.live = state;
  }

  const events = new EventSource("/events");
  events.addEventListener("open", () => setLive("on"));
  events.addEventListener("error", () => setLive("off"));
  events.addEventListener("render", (event) => {
    setLive("on");
    if (JSON.parse(event.data).version !== version) refresh();
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-action='send-test']");
    if (!button) return;
    const result = document.querySelector("[data-send-result]");
    button.disabled = true;
    result.className = "send-result";
    result.textContent = "Sending…";
    try {
      const response = await fetch("/send-test", {
        method: "POST",
        headers: { "X-Preview-Token": token },
      });
      const body = await response.json();
      result.textContent = response.ok ? body.message : body.error;
      if (!response.ok) result.classList.add("failed");
    } catch (error) {
      result.textContent = "The preview server did not answer: " + error;
      result.classList.add("failed");
    } finally {
      button.disabled = false;
    }
  });

  frames().forEach(load);
})();
