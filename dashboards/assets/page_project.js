// Each of the dashboard's own requests (a callback, a page's layout) names the project its
// tab shows, so that a tab keeps reading and saving its project after another tab of the
// same session switched to another one (dashboards/auth.py, PROJECT_HEADER).
(function () {
    const originalFetch = window.fetch.bind(window);
    window.fetch = function (resource, init) {
        const marker = document.getElementById("page-project");
        const url = typeof resource === "string" ? resource : resource && resource.url;
        if (marker && url && url.includes("/_dash-")) {
            init = Object.assign({}, init);
            const headers = new Headers(init.headers || {});
            headers.set("X-RouteLedger-Project", encodeURIComponent(marker.dataset.project));
            init.headers = headers;
        }
        return originalFetch(resource, init);
    };
})();
