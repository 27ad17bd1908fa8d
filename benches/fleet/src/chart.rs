//! One PNG per scenario: requests/s and 429s/s over time, IMDS (all nodes) above, Entra
//! below. Drawn without text, so no font library is needed: report.md gives the legend
//! and each panel's scale.

use std::path::Path;

use plotters::prelude::*;

use crate::metrics::PerSecond;

/// Requests in blue, 429s in red.
pub const LEGEND: &str = "blue: requests/s, red: 429s/s; each point is the busiest second of a minute; \
                          top panel IMDS (all nodes), bottom panel Entra; x: the measured span";

/// The busiest second of each minute.
pub fn per_minute_peak(per_second: &[u32]) -> Vec<u32> {
    per_second
        .chunks(60)
        .map(|minute| minute.iter().copied().max().unwrap_or(0))
        .collect()
}

/// Writes the chart; returns each panel's y-axis top (requests/s).
pub fn write(path: &Path, imds: &PerSecond, entra: &PerSecond) -> Result<(u32, u32), String> {
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(300);
    let imds_top = panel(&top, imds)?;
    let entra_top = panel(&bottom, entra)?;
    root.present().map_err(|e| e.to_string())?;
    Ok((imds_top, entra_top))
}

fn panel(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, counts: &PerSecond) -> Result<u32, String> {
    let requests = per_minute_peak(&counts.requests);
    let throttled = per_minute_peak(&counts.throttled);
    let y_top = requests.iter().chain(&throttled).copied().max().unwrap_or(0).max(1);
    let x_end = requests.len().max(2) - 1;
    let area = area.margin(8, 8, 8, 8);
    area.draw(&Rectangle::new([(0, 0), (1183, 283)], BLACK.stroke_width(1)))
        .map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(0..x_end, 0..y_top)
        .map_err(|e| e.to_string())?;
    // Quarter lines, in grey, for a sense of scale without labels.
    for quarter in 1..4 {
        let y = y_top * quarter / 4;
        chart
            .draw_series(LineSeries::new([(0, y), (x_end, y)], RGBColor(220, 220, 220)))
            .map_err(|e| e.to_string())?;
    }
    let series = |values: &[u32]| values.iter().enumerate().map(|(x, y)| (x, *y)).collect::<Vec<_>>();
    chart
        .draw_series(LineSeries::new(series(&requests), BLUE))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(series(&throttled), RED))
        .map_err(|e| e.to_string())?;
    Ok(y_top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_keeps_its_busiest_second() {
        let mut seconds = vec![0u32; 130];
        seconds[5] = 3;
        seconds[70] = 9;
        seconds[71] = 2;
        seconds[125] = 1;
        assert_eq!(per_minute_peak(&seconds), vec![3, 9, 1]);
    }
}
