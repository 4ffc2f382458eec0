// The console's route table and start; loaded last, after every page.
"use strict";

// ---------------------------------------------------------------- routes

const routes = [
  [/^#\/nodes\/([^/]+)$/, (m) => nodeDetailPage(decodeURIComponent(m[1]))],
  [/^#\/nodes$/, nodesPage],
  [/^#\/devices\/([^/]+)$/, (m) => devicePage(decodeURIComponent(m[1]))],
  [/^#\/devices$/, devicesPage],
  [/^#\/alarms$/, alarmsPage],
  [/^#\/rules$/, rulesPage],
  [/^#\/functions$/, functionsPage],
  [/^#\/components$/, componentsPage],
  [/^#\/rollouts$/, rolloutsPage],
  [/^#\/deployments$/, deploymentsPage],
  [/^#\/releases$/, releasesPage],
  [/^#\/messages$/, messagesPage],
  [/^#\/tokens$/, tokensPage],
  [/^#\/cloud$/, cloudPage],
];

// ---------------------------------------------------------------- start

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  byId("login-form").addEventListener("submit", login);
  byId("logout").addEventListener("click", () => loggedOut());
  route();
});
