// The console's one script: no framework, no build step. Pages work without it; it adds
// what needs a script (live counters over server-sent events, confirmations).
"use strict";

// A campaign's page: the counters follow the "progress" events of [data-events] until
// the stream says the campaign has stopped moving ("end").
function followProgress(section) {
  if (!window.EventSource || section.hasAttribute("data-final")) return;
  const number = new Intl.NumberFormat("en-US");
  const source = new EventSource(section.dataset.events);
  source.addEventListener("progress", (event) => {
    const data = JSON.parse(event.data);
    for (const cell of section.querySelectorAll("[data-count]")) {
      cell.textContent = number.format(data[cell.dataset.count]);
    }
    section.querySelector('[data-field="rate"]').textContent = data.rate;
    section.querySelector('[data-field="left"]').textContent = data.left;
    const bar = section.querySelector('[data-field="done"]');
    bar.max = Math.max(data.total, 1);
    bar.value = data.sent + data.failed;
    for (const label of document.querySelectorAll('[data-field="label"]')) {
      label.textContent = data.label;
      label.className = "badge " + data.css;
    }
    const error = section.querySelector('[data-field="last_error"]');
    error.textContent = data.send_error || data.last_error;
    error.hidden = !error.textContent;
    const rows = document.querySelector("[data-errors]");
    if (rows) {
      rows.replaceChildren(...(data.errors.length ? data.errors : [["None", "", ""]]).map((cells) => {
        const tr = document.createElement("tr");
        for (const text of cells) {
          const td = document.createElement("td");
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      }));
    }
    section.querySelector('[data-field="live"]').textContent =
      data.final ? "Not sending." : "Updating live.";
  });
  source.addEventListener("end", () => {
    source.close();
    section.setAttribute("data-final", "");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const section of document.querySelectorAll("[data-events]")) followProgress(section);
});
