"""Views: plotly figures (:mod:`.plots`) and notebook widgets (:mod:`.widgets`)."""
