document.documentElement.dataset.showcase = "loaded";
