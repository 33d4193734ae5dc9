// The live door feed: new door events from the server (server-sent events), added at the top of
// the list. The page works without it (it shows the latest events when loaded).
'use strict';
document.addEventListener('DOMContentLoaded', () => {
  const list = document.getElementById('live');
  const feed = list && list.dataset.feed;
  if (!feed || !window.EventSource) return;
  const source = new EventSource(feed);
  source.addEventListener('door', (event) => {
    const { id, html } = JSON.parse(event.data);
    if (list.querySelector(`[data-id="${CSS.escape(id)}"]`)) return; // already shown with the page
    // the server escaped every value in this fragment (src/console/pages.ts, eventItem)
    const template = document.createElement('template');
    template.innerHTML = html;
    list.prepend(template.content);
    while (list.children.length > 100) list.lastElementChild.remove();
  });
});
